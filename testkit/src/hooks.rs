//! The lifecycle lines the `forklift` command prints on stdout, one event a line:
//! `listening on http://127.0.0.1:PORT/`, `spawned worker=0 pid=12 generation=1`,
//! `ready pids=12,13`, `exited worker=0 pid=12 status="killed by SIGKILL"`,
//! `recovered worker=0 old_pid=12 new_pid=14`...

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Splits a hook line such as `exited worker=0 pid=12 status="killed by SIGKILL"` into its
/// first word and its `key=value` fields (values may be double-quoted).
pub fn parse_hook(line: &str) -> (String, HashMap<String, String>) {
    let line = line.trim();
    let (word, mut rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let mut fields = HashMap::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            // quoted value, with \" and \\ escapes
            let mut out = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            value = out;
            rest = &r[end.min(r.len())..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            value = rest[..end].to_string();
            rest = &rest[end..];
        }
        fields.insert(key, value);
    }
    (word.to_string(), fields)
}

/// One field of a hook line (see [`parse_hook`]).
pub fn hook_field(line: &str, key: &str) -> Option<String> {
    parse_hook(line).1.remove(key)
}

/// A parsed hook line with its index among the stdout lines.
#[derive(Clone, Debug)]
pub struct Hook {
    pub index: usize,
    pub kind: String,
    pub fields: HashMap<String, String>,
    pub line: String,
}

impl Hook {
    /// A numeric field; panics if it is missing or not a number.
    pub fn num(&self, key: &str) -> u32 {
        let v = self
            .fields
            .get(key)
            .unwrap_or_else(|| panic!("hook line {:?} has no field {key}", self.line));
        v.parse().unwrap_or_else(|_| {
            panic!(
                "hook line {:?}: field {key}={v:?} is not a number",
                self.line
            )
        })
    }

    /// A field; panics if it is missing.
    pub fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("hook line {:?} has no field {key}", self.line))
    }
}

/// `12,13` → `[12, 13]`; panics on a pid that is not a number.
pub fn parse_pid_list(s: &str) -> Vec<u32> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("bad pid {p:?} in pid list {s:?}"))
        })
        .collect()
}

/// A listener announced by a `listening on ...` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// The TCP address; panics for a unix socket.
    pub fn tcp(&self) -> SocketAddr {
        match self {
            Listen::Tcp(a) => *a,
            Listen::Unix(p) => panic!("expected a TCP listener, got unix:{}", p.display()),
        }
    }
}

/// Parses the text after `listening on `.
pub fn parse_listen(rest: &str) -> Option<Listen> {
    let rest = rest.trim();
    if let Some(addr) = rest
        .strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))
    {
        let addr = addr.trim_end_matches('/');
        addr.parse::<SocketAddr>().ok().map(Listen::Tcp)
    } else {
        rest.strip_prefix("unix:")
            .map(|p| Listen::Unix(PathBuf::from(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_lines_split_into_kind_and_fields() {
        let (kind, f) = parse_hook(r#"exited worker=0 pid=12 status="killed by \"KILL\"""#);
        assert_eq!(kind, "exited");
        assert_eq!(f["worker"], "0");
        assert_eq!(f["pid"], "12");
        assert_eq!(f["status"], r#"killed by "KILL""#);
        assert_eq!(hook_field("ready pids=3,4", "pids").as_deref(), Some("3,4"));
        assert_eq!(parse_pid_list("3, 4,"), [3, 4]);
    }

    #[test]
    fn listening_lines_name_tcp_or_unix() {
        assert_eq!(
            parse_listen("http://127.0.0.1:8080/"),
            Some(Listen::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("unix:/tmp/s.sock"),
            Some(Listen::Unix("/tmp/s.sock".into()))
        );
        assert_eq!(parse_listen("nonsense"), None);
    }
}
