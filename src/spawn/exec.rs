//! The exec path: fork, place the fds, exec a command (the current binary by default).
//!
//! Everything the child needs is prepared before `fork`, so between `fork` and `execve` the
//! child makes only async-signal-safe calls and allocates nothing: this path stays sound in a
//! master that runs other threads. The child gets systemd's socket-activation environment:
//! listeners at fd 3.., `LISTEN_FDS`, `LISTEN_PID` (its own pid, written in after fork),
//! `LISTEN_FDNAMES`, plus forklift's `FORKLIFT_*` variables.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::{ChildSetup, Spawn, SpawnSpec};
use crate::protocol::{self, LISTEN_FDS_START};
use crate::sys::{fd, signals};

/// What to execute, before the per-worker environment is added.
#[derive(Debug, Clone)]
pub(crate) struct CommandLine {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Variables to set (`Some`) or remove (`None`) on top of the master's environment.
    pub env: Vec<(OsString, Option<OsString>)>,
    pub cwd: Option<PathBuf>,
}

impl CommandLine {
    /// The current binary with the current arguments: fasthttp's re-exec.
    pub fn current_exe() -> io::Result<CommandLine> {
        let program = std::env::current_exe()?;
        Ok(CommandLine {
            program,
            args: std::env::args_os().collect(),
            env: Vec::new(),
            cwd: None,
        })
    }

    /// The binary as it was invoked, with the current arguments: what a binary upgrade
    /// executes. `argv[0]` is taken as given (made absolute against the working directory,
    /// or found on PATH), not through `/proc/self/exe`, which resolves symlinks: a deploy
    /// that swaps a `current` symlink to a new release then upgrades to the new release.
    /// `reexec_as` replaces it when given. Falls back to [`current_exe`](Self::current_exe)
    /// when `argv[0]` names no executable file.
    pub fn as_invoked(reexec_as: Option<&Path>) -> io::Result<CommandLine> {
        let mut line = CommandLine::current_exe()?;
        let invoked = match reexec_as {
            Some(path) => Some(path.to_path_buf()),
            None => std::env::args_os().next().map(PathBuf::from),
        };
        if let Some(invoked) = invoked {
            let resolved = if invoked.as_os_str().as_bytes().contains(&b'/') {
                std::env::current_dir().map(|cwd| cwd.join(&invoked)).ok()
            } else {
                resolve_program(&invoked, &[]).ok()
            };
            match resolved {
                Some(path) if is_executable(&path) => line.program = path,
                _ if reexec_as.is_some() => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("--reexec-as {}: not an executable file", invoked.display()),
                    ))
                }
                _ => {}
            }
        }
        Ok(line)
    }

    /// The command a [`Spawn::Command`] producer built.
    pub fn from_command(cmd: &std::process::Command) -> CommandLine {
        let program = PathBuf::from(cmd.get_program());
        let mut args = vec![cmd.get_program().to_os_string()];
        args.extend(cmd.get_args().map(OsStr::to_os_string));
        CommandLine {
            program,
            args,
            env: cmd
                .get_envs()
                .map(|(k, v)| (k.to_os_string(), v.map(OsStr::to_os_string)))
                .collect(),
            cwd: cmd.get_current_dir().map(Path::to_path_buf),
        }
    }

    pub fn for_spawn(spawn: &Spawn, spec: &SpawnSpec<'_>) -> io::Result<CommandLine> {
        match spawn {
            Spawn::Command(producer) => Ok(CommandLine::from_command(&producer(&spec.slot))),
            _ => CommandLine::current_exe(),
        }
    }
}

/// Room for the pid digits written into `LISTEN_PID=` after fork.
const PID_DIGITS: usize = 20;

/// Forks and executes `cmd` as worker `spec`. Returns the child's pid once `execve` has
/// succeeded, or the reason it failed (command not found, permission denied, ...).
pub(crate) fn spawn(cmd: &CommandLine, spec: &SpawnSpec<'_>) -> io::Result<u32> {
    let n_listeners = spec.listeners.len();
    let status_fd = LISTEN_FDS_START + n_listeners as i32;
    let names: Vec<String> = (0..n_listeners).map(|i| format!("listener{i}")).collect();
    let vars = [
        (protocol::ENV_WORKER_ID, spec.slot.id.to_string()),
        (protocol::ENV_GENERATION, spec.slot.generation.to_string()),
        (protocol::ENV_MASTER_PID, spec.master_pid.to_string()),
        (protocol::ENV_STATUS_FD, status_fd.to_string()),
    ];
    let mut fds: Vec<i32> = spec.listeners.iter().map(|fd| fd.as_raw_fd()).collect();
    fds.push(spec.status.as_raw_fd());
    fork_exec(
        cmd,
        &fds,
        &names,
        &vars,
        Some(spec.master_pid),
        spec.setup,
        spec.stdio,
    )
}

/// Starts `cmd` as the next master (binary upgrade): it inherits `sockets` as fds from 3
/// with their `LISTEN_FDNAMES`, and learns which master to retire once it serves.
/// It gets no parent-death signal: it must outlive the master that starts it.
pub(crate) fn spawn_master(
    cmd: &CommandLine,
    sockets: &[(i32, String)],
    old_master: u32,
) -> io::Result<u32> {
    let fds: Vec<i32> = sockets.iter().map(|(fd, _)| *fd).collect();
    let names: Vec<String> = sockets.iter().map(|(_, name)| name.clone()).collect();
    let vars = [(protocol::ENV_UPGRADE_FROM, old_master.to_string())];
    fork_exec(cmd, &fds, &names, &vars, None, ChildSetup::default(), None)
}

/// Forks and executes `cmd` with `fds` placed at 3.. (the first `names.len()` of them
/// announced in `LISTEN_FDS`), `vars` added to the environment, and, with `parent_death`,
/// SIGTERM asked for when that parent dies.
fn fork_exec(
    cmd: &CommandLine,
    fds: &[i32],
    names: &[String],
    vars: &[(&str, String)],
    parent_death: Option<u32>,
    setup: ChildSetup,
    stdio: Option<[i32; 2]>,
) -> io::Result<u32> {
    let program = resolve_program(&cmd.program, &cmd.env)?;
    let program = cstring(program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = cmd
        .args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<io::Result<_>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());

    let mut env = base_env(&cmd.env);
    env.push(format!("{}={}", protocol::ENV_LISTEN_FDS, names.len()).into_bytes());
    env.push(format!("{}={}", protocol::ENV_LISTEN_FDNAMES, names.join(":")).into_bytes());
    for (k, v) in vars {
        env.push(format!("{k}={v}").into_bytes());
    }
    let pid_entry = format!("{}=", protocol::ENV_LISTEN_PID);
    let pid_offset = pid_entry.len();
    let mut pid_buf = pid_entry.into_bytes();
    pid_buf.resize(pid_offset + PID_DIGITS + 1, 0);
    let mut envp: Vec<Vec<u8>> = Vec::with_capacity(env.len() + 1);
    for mut e in env {
        if e.contains(&0) {
            continue;
        }
        e.push(0);
        envp.push(e);
    }
    envp.push(pid_buf);
    let pid_index = envp.len() - 1;
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr().cast()).collect();
    envp_ptrs.push(std::ptr::null());
    let pid_ptr: *mut u8 = envp[pid_index].as_mut_ptr();

    let cwd = match &cmd.cwd {
        Some(dir) => Some(cstring(dir.as_os_str().as_bytes())?),
        None => None,
    };
    let sources = fds;
    let mut temps = vec![-1i32; sources.len()];
    let (err_read, err_write) = fd::pipe_cloexec()?;
    let ctx = ChildPlan {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        pid_digits: pid_ptr,
        pid_offset,
        cwd: cwd.as_ref().map(|c| c.as_ptr()),
        sources,
        temps: temps.as_mut_ptr(),
        err_fd: err_write.as_raw_fd(),
        parent_death,
        setup,
        stdio,
    };

    let mask = signals::block_all();
    // SAFETY: the child runs only `exec_child`, which makes async-signal-safe calls on memory
    // prepared above and ends in execve or _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child, with a plan whose pointers stay valid (this frame is alive).
        unsafe { exec_child(&ctx) }
    }
    let fork_error = io::Error::last_os_error();
    signals::restore_mask(&mask);
    if pid < 0 {
        return Err(fork_error);
    }
    drop(err_write);
    // execve closes the pipe (close-on-exec): EOF means success, four bytes are an errno.
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        // SAFETY: reading into the remaining part of a local buffer.
        let n = unsafe {
            libc::read(
                err_read.as_raw_fd(),
                errno[got..].as_mut_ptr().cast(),
                4 - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => break,
        }
    }
    if got == 4 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited or is about to.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let err = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
        return Err(io::Error::new(
            err.kind(),
            format!("cannot execute {}: {err}", cmd.program.display()),
        ));
    }
    Ok(pid as u32)
}

struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    pid_digits: *mut u8,
    pid_offset: usize,
    cwd: Option<*const libc::c_char>,
    sources: &'a [i32],
    temps: *mut i32,
    err_fd: i32,
    parent_death: Option<u32>,
    setup: ChildSetup,
    /// Where the command's stdout and stderr go (write ends of the master's relay pipes).
    stdio: Option<[i32; 2]>,
}

/// Between fork and exec: async-signal-safe calls only.
///
/// # Safety
/// Call only in a freshly forked child, with a plan whose pointers are valid.
unsafe fn exec_child(plan: &ChildPlan<'_>) -> ! {
    signals::reset_to_default();
    // Rust ignores SIGPIPE; a command gets the default, as with std::process::Command.
    // SAFETY: SIG_DFL is a valid disposition.
    let _ = unsafe { signals::set_handler(libc::SIGPIPE, libc::SIG_DFL) };

    let total = plan.sources.len() as i32;
    let above = LISTEN_FDS_START + total;
    // SAFETY: fcntl/dup2 on fds open in this child; temps has room for `total` ints.
    unsafe {
        // Move the error pipe and every source above the target range first, so that placing
        // fd 3+i never overwrites a source still to be placed.
        let err_fd = libc::fcntl(plan.err_fd, libc::F_DUPFD_CLOEXEC, above);
        if err_fd < 0 {
            fail(plan.err_fd);
        }
        for (i, &src) in plan.sources.iter().enumerate() {
            let t = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, above);
            if t < 0 {
                fail(err_fd);
            }
            *plan.temps.add(i) = t;
        }
        let mut stdio = [-1, -1];
        if let Some(pipes) = plan.stdio {
            for (slot, &fd) in stdio.iter_mut().zip(pipes.iter()) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if *slot < 0 {
                    fail(err_fd);
                }
            }
        }
        for i in 0..total {
            // dup2 leaves the new fd without close-on-exec: these are the inherited ones.
            if libc::dup2(*plan.temps.add(i as usize), LISTEN_FDS_START + i) < 0 {
                fail(err_fd);
            }
        }
        if plan.stdio.is_some()
            && (libc::dup2(stdio[0], libc::STDOUT_FILENO) < 0
                || libc::dup2(stdio[1], libc::STDERR_FILENO) < 0)
        {
            fail(err_fd);
        }
        // Credentials first: changing them clears the parent-death signal.
        if plan.setup.apply().is_err() {
            fail(err_fd);
        }
        if let Some(parent) = plan.parent_death {
            parent_death_signal(parent);
        }
        write_pid(plan.pid_digits.add(plan.pid_offset), libc::getpid() as u32);
        if let Some(dir) = plan.cwd {
            if libc::chdir(dir) != 0 {
                fail(err_fd);
            }
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(err_fd)
    }
}

/// Reports errno to the parent through the error pipe and exits.
///
/// # Safety
/// Child side only.
unsafe fn fail(err_fd: i32) -> ! {
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(0)
        .to_ne_bytes();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is local.
    unsafe {
        libc::write(err_fd, errno.as_ptr().cast(), errno.len());
        libc::_exit(127)
    }
}

/// Asks for SIGTERM when the master dies, and exits if it already has.
///
/// # Safety
/// Child side only; async-signal-safe.
unsafe fn parent_death_signal(master_pid: u32) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
    }
    // SAFETY: getppid and _exit are async-signal-safe.
    unsafe {
        if libc::getppid() as u32 != master_pid {
            libc::_exit(1);
        }
    }
}

/// Writes `pid` in decimal, NUL-terminated, at `dst` (which has room for 21 bytes).
///
/// # Safety
/// `dst` must be valid for `PID_DIGITS + 1` bytes.
unsafe fn write_pid(dst: *mut u8, mut pid: u32) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for i in 0..n {
        // SAFETY: i < n <= PID_DIGITS, within the caller's buffer.
        unsafe { *dst.add(i) = digits[n - 1 - i] };
    }
    // SAFETY: n <= PID_DIGITS, so the terminator is within the buffer.
    unsafe { *dst.add(n) = 0 };
}

/// The master's environment without forklift's per-worker variables, plus `changes`.
fn base_env(changes: &[(OsString, Option<OsString>)]) -> Vec<Vec<u8>> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !protocol::WORKER_ENV.iter().any(|w| OsStr::new(w) == k))
        // The master talks to the service manager; its workers do not.
        .filter(|(k, _)| k != "NOTIFY_SOCKET")
        .collect();
    for (k, v) in changes {
        vars.retain(|(existing, _)| existing != k);
        if let Some(v) = v {
            vars.push((k.clone(), v.clone()));
        }
    }
    vars.into_iter()
        .map(|(k, v)| {
            let mut e = k.into_vec();
            e.push(b'=');
            e.extend(v.into_vec());
            e
        })
        .collect()
}

/// Finds `program` on PATH (the worker's PATH if the command sets one) unless it has a slash.
fn resolve_program(program: &Path, env: &[(OsString, Option<OsString>)]) -> io::Result<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_path_buf());
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .and_then(|(_, v)| v.clone())
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "command not found: {} (not in PATH={})",
            program.display(),
            path.to_string_lossy()
        ),
    ))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a command argument contains a NUL byte",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_is_written_in_decimal_and_terminated() {
        for (pid, text) in [
            (0u32, "0"),
            (7, "7"),
            (4194304, "4194304"),
            (u32::MAX, "4294967295"),
        ] {
            let mut buf = [0xffu8; PID_DIGITS + 1];
            // SAFETY: the buffer has PID_DIGITS + 1 bytes.
            unsafe { write_pid(buf.as_mut_ptr(), pid) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(&buf[..end], text.as_bytes());
        }
    }

    #[test]
    fn worker_variables_are_not_passed_on_twice() {
        let env = base_env(&[
            (
                OsString::from("FORKLIFT_TEST_SET"),
                Some(OsString::from("1")),
            ),
            (OsString::from("PATH"), None),
        ]);
        let has = |prefix: &str| env.iter().any(|e| e.starts_with(prefix.as_bytes()));
        assert!(has("FORKLIFT_TEST_SET=1"));
        assert!(!has("PATH="));
        assert!(!has("LISTEN_PID="));
    }

    #[test]
    fn programs_resolve_on_path_or_fail_clearly() {
        assert!(resolve_program(Path::new("sh"), &[]).is_ok());
        let err = resolve_program(Path::new("no-such-program-xyz"), &[]).unwrap_err();
        assert!(err
            .to_string()
            .contains("command not found: no-such-program-xyz"));
        assert_eq!(
            resolve_program(Path::new("./rel/prog"), &[]).unwrap(),
            PathBuf::from("./rel/prog")
        );
    }
}
