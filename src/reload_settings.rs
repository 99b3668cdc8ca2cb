//! What a rolling reload may change without a new master: the settings
//! [`Prefork::on_reload`](crate::Prefork::on_reload) receives, to re-read a configuration file
//! on SIGHUP as nginx and gunicorn do.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::Config;
use crate::hooks::{ReloadHook, RevertHook};
use crate::http::HttpConfig;
use crate::Prefork;

/// The settings a reload (SIGHUP, `forklift reload`) may change, as the master runs with them.
/// An [`on_reload`](crate::Prefork::on_reload) hook edits them; the master applies them before
/// it starts the new generation. Listen addresses, the user and the spawn mode are bound
/// at start and change only with a binary upgrade (USR2).
///
/// ```
/// let server = forklift::Prefork::new().on_reload(|settings: &mut forklift::ReloadSettings| {
///     settings.workers = 4;
///     settings.graceful_timeout = std::time::Duration::from_secs(10);
///     Ok(())
/// });
/// # let _ = server;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReloadSettings {
    /// How many workers the new generation has (at least 1).
    pub workers: usize,
    /// How long a graceful stop waits for in-flight requests.
    pub graceful_timeout: Duration,
    /// How long a worker may take to report ready.
    pub boot_timeout: Duration,
    /// How long a worker may go without a heartbeat; `None` turns the check off.
    pub worker_timeout: Option<Duration>,
    /// How long a graceful stop keeps serving after it reports unready.
    pub shutdown_delay: Duration,
    /// Replace a worker whose resident set passes this many bytes.
    pub max_worker_memory: Option<u64>,
    /// Replace a worker that has run this long.
    pub max_worker_age: Option<Duration>,
    /// The HTTP settings of [`Prefork::serve`]'s workers, when serving HTTP.
    http: Option<HttpConfig>,
    /// The access log's file, which the master opens (and creates for the workers' user):
    /// the config's until an [`http`](ReloadSettings::http) edit changes it.
    access_log_file: Option<PathBuf>,
    /// The workers' (uid, gid) when they drop privileges: a new access log file is theirs.
    credentials: Option<(u32, u32)>,
}

impl ReloadSettings {
    /// The settings `config` runs with, `workers` being the current slot count (TTIN/TTOU
    /// included), and `credentials` the workers' user and group if they drop privileges.
    pub(crate) fn from_config(
        config: &Config,
        workers: usize,
        credentials: Option<(u32, u32)>,
    ) -> ReloadSettings {
        ReloadSettings {
            workers,
            graceful_timeout: config.graceful_timeout,
            boot_timeout: config.boot_timeout,
            worker_timeout: config.worker_timeout,
            shutdown_delay: config.shutdown_delay,
            max_worker_memory: config.max_worker_memory,
            max_worker_age: config.max_worker_age,
            http: None,
            access_log_file: config.access_log_file.clone(),
            credentials,
        }
    }

    /// Changes the HTTP settings of the workers [`Prefork::serve`] starts from now on: `edit`
    /// gets a builder holding the current ones and returns it with its HTTP setters applied
    /// ([`tls_files`](Prefork::tls_files), [`access_log`](Prefork::access_log),
    /// [`header_read_timeout`](Prefork::header_read_timeout), ...). The pool settings of that
    /// builder are ignored: they are the fields of `self`. New TLS files are loaded before the
    /// reload starts, and a failure refuses it.
    ///
    /// Fork-mode workers inherit what this sets. Exec-mode workers (and
    /// [`Prefork::run`]) build their settings again in their own process: there it does
    /// nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = forklift::Prefork::new().on_reload(|settings| {
    ///     settings.http(|http| http.access_log(true).header_read_timeout(Duration::from_secs(5)));
    ///     Ok(())
    /// });
    /// # let _ = server;
    /// ```
    pub fn http(&mut self, edit: impl FnOnce(Prefork) -> Prefork) {
        if let Some(http) = self.http.take() {
            self.http = Some(edit(Prefork::with_http(http)).into_http());
        }
    }

    /// Writes them to `config` (all but `workers`, which the master scales to), or says why
    /// the master cannot run with them; `config` is unchanged then.
    pub(crate) fn apply_to(&self, config: &mut Config) -> crate::Result<()> {
        let next = self.validated()?;
        config.graceful_timeout = next.graceful_timeout;
        config.boot_timeout = next.boot_timeout;
        config.worker_timeout = next.worker_timeout;
        config.shutdown_delay = next.shutdown_delay;
        config.max_worker_memory = next.max_worker_memory;
        config.max_worker_age = next.max_worker_age;
        config.access_log_file = self.access_log_file.clone();
        Ok(())
    }

    /// The pool settings as a config, checked as `Prefork::serve` checks them.
    fn validated(&self) -> crate::Result<Config> {
        let next = Config {
            workers: self.workers,
            graceful_timeout: self.graceful_timeout,
            boot_timeout: self.boot_timeout,
            worker_timeout: self.worker_timeout,
            shutdown_delay: self.shutdown_delay,
            max_worker_memory: self.max_worker_memory,
            max_worker_age: self.max_worker_age,
            ..Config::default()
        };
        next.validate()?;
        Ok(next)
    }
}

/// Wraps `hook` so that the HTTP settings it changes (see [`ReloadSettings::http`]) are the
/// ones `shared` hands each worker [`Prefork::serve`] forks from then on. Also returns what
/// puts back the settings the last call replaced: the master calls it when the new generation
/// cannot boot, so that the generation serving on respawns its workers with its own settings.
pub(crate) fn share_http(
    hook: Option<ReloadHook>,
    shared: Arc<Mutex<HttpConfig>>,
) -> (Option<ReloadHook>, Option<RevertHook>) {
    let Some(mut hook) = hook else {
        return (None, None);
    };
    let before: Arc<Mutex<Option<HttpConfig>>> = Arc::default();
    let (replaced, serving) = (before.clone(), shared.clone());
    let wrapped: ReloadHook = Box::new(move |settings: &mut ReloadSettings| {
        let current = lock(&shared).clone();
        *lock(&replaced) = None;
        settings.http = Some(current);
        hook(settings)?;
        // A reload the pool settings refuse must leave the HTTP settings as they were: the
        // workers forked later (respawns of the generation that serves on) take them.
        settings.validated()?;
        let Some(mut http) = settings.http.take() else {
            return Ok(());
        };
        http.graceful_timeout = settings.graceful_timeout;
        #[cfg(feature = "tls")]
        if http.tls.is_on() {
            http.tls.check()?;
        }
        if let Some(path) = &http.access_log_file {
            if http.access_log_file != settings.access_log_file {
                // The new generation's workers open it as they boot: a path they could not
                // open refuses the reload now, while the old generation serves on.
                crate::master::logs::open_access_log(path, settings.credentials)?;
            }
        }
        settings.access_log_file = http.access_log_file.clone();
        *lock(&replaced) = Some(std::mem::replace(&mut *lock(&shared), http));
        Ok(())
    });
    let revert: RevertHook = Box::new(move || {
        if let Some(http) = lock(&before).take() {
            *lock(&serving) = http;
        }
    });
    (Some(wrapped), Some(revert))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
