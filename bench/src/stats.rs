//! Summaries over rounds: the median and the range (min–max).

use serde::Serialize;

/// The median and range of one figure over the rounds that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many values went in.
    pub n: usize,
}

impl Spread {
    /// Summarises `values`, ignoring NaNs; `None` when nothing is left.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: median_of_sorted(&v),
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        })
    }
}

/// The median of a sorted, non-empty slice: the middle value, or the mean of the two middle
/// values for an even count.
fn median_of_sorted(v: &[f64]) -> f64 {
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_takes_the_middle() {
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            s,
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0,
                n: 3
            }
        );
    }

    #[test]
    fn even_count_averages_the_middle_two() {
        let s = Spread::of([10.0, 40.0, 20.0, 30.0]).unwrap();
        assert_eq!(s.median, 25.0);
        assert_eq!((s.min, s.max, s.n), (10.0, 40.0, 4));
    }

    #[test]
    fn single_value_is_its_own_range() {
        let s = Spread::of([7.5]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (7.5, 7.5, 7.5, 1));
    }

    #[test]
    fn empty_and_nan_only_give_none() {
        assert_eq!(Spread::of([]), None);
        assert_eq!(Spread::of([f64::NAN]), None);
        let s = Spread::of([f64::NAN, 5.0, 1.0]).unwrap();
        assert_eq!((s.median, s.n), (3.0, 2));
    }
}
