//! Scenario 2: the master SIGKILLed under load. Do its workers go, is the port freed, and
//! does a new server bind it at once?

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use forklift_testkit::process::{group_members, process_alive, signal};
use forklift_testkit::server::serve_args;
use forklift_testkit::time::{ms, poll_until_every};

use crate::client::get;
use crate::context::Ctx;
use crate::load::{FailRec, FirstSeen, Load, LoadSpec, Mode, Tally};
use crate::report::{Section, Table};
use crate::server::{ready, start, Opts};

pub fn run(ctx: &Ctx) -> Section {
    let mut sec = Section::new("2. Master SIGKILLed under load");
    sec.intro.push(
        "2 workers under load (16 keep-alive connections and 8 connection-per-request threads). \
         SIGKILL to the master; then: time until every worker has exited (polled every 1 ms), \
         time until a connect is refused (the port is free), and a new `forklift serve` on the \
         same address started at once: whether it binds, and the time until it answers."
            .into(),
    );
    let mut t = Table::new(&[
        "sockets",
        "requests (whole run)",
        "failed before kill",
        "workers gone after",
        "port refuses after",
        "new server binds",
        "new server answers after",
        "failures after the kill (by kind)",
    ]);
    for reuse in [false, true] {
        let sockets = if reuse {
            "SO_REUSEPORT per worker"
        } else {
            "shared"
        };
        let mut args = serve_args("2", &[]);
        if reuse {
            args.push("--reuse-port");
        }
        let name = format!("s2-{}", if reuse { "reuseport" } else { "shared" });
        let mut server = start(ctx, &name, &args, Opts::default());
        sec.command(&server);
        let workers = ready(&server);
        let addr = server.addr();
        let seen: FirstSeen = Arc::default();
        let dur = Duration::from_secs(8);
        let ka = Load::start(&LoadSpec::new(addr, Mode::KeepAlive, 16, dur), &seen);
        let pr = Load::start(&LoadSpec::new(addr, Mode::PerRequest, 8, dur), &seen);
        thread::sleep(Duration::from_millis(1000));
        // The clock starts before the kill: a load thread may see its effect before this
        // thread runs again.
        let t0 = Instant::now();
        signal(server.pid, libc::SIGKILL);
        let gone = poll_until_every(
            t0 + Duration::from_secs(5),
            Duration::from_millis(1),
            || workers.iter().all(|p| !process_alive(*p)),
        );
        let gone_after = t0.elapsed();
        let refused = poll_until_every(
            t0 + Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                matches!(
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
                )
            },
        );
        let refused_after = t0.elapsed();
        let mut tally = ka.finish();
        tally.merge(pr.finish());
        let (before, after): (Vec<FailRec>, Vec<FailRec>) =
            tally.fails.iter().cloned().partition(|f| f.at < t0);
        let requests_before = tally.total();
        let mut after_t = Tally {
            fails: after,
            ..Default::default()
        };
        after_t.ok = 0;
        // A new server on the same port, at once.
        let listen = addr.to_string();
        let mut args2 = vec!["serve", "--listen", listen.as_str(), "--workers", "2"];
        if reuse {
            args2.push("--reuse-port");
        }
        let t1 = Instant::now();
        let mut s2 = start(ctx, &format!("{name}-new"), &args2, Opts::default());
        let ready =
            s2.wait_for_line_while_alive(|l| l.starts_with("ready "), Duration::from_secs(10));
        let answered = ready.is_some()
            && poll_until_every(
                t1 + Duration::from_secs(10),
                Duration::from_millis(1),
                || get(addr, "/", Duration::from_secs(2)).is_ok_and(|r| r.status == 200),
            );
        let answered_after = t1.elapsed();
        let in_use = s2.stderr.count_containing("already in use") > 0;
        let _ = server.try_wait_exit(Instant::now() + Duration::from_secs(1));
        let left = group_members(server.pgid);
        t.row(vec![
            sockets.into(),
            requests_before.to_string(),
            before.len().to_string(),
            if gone {
                ms(gone_after)
            } else {
                format!(
                    "> 5 s ({} alive)",
                    workers.iter().filter(|p| process_alive(**p)).count()
                )
            },
            if refused {
                ms(refused_after)
            } else {
                "> 5 s".into()
            },
            if ready.is_some() {
                "yes".into()
            } else if in_use {
                "no: address in use".into()
            } else {
                "no".into()
            },
            if answered {
                ms(answered_after)
            } else {
                "never".into()
            },
            after_t.breakdown(),
        ]);
        sec.check(
            format!("{sockets}: every worker gone within 1 s"),
            gone && gone_after <= Duration::from_secs(1),
            format!("{} ({} left in the group)", ms(gone_after), left.len()),
        );
        sec.check(
            format!("{sockets}: the port is free and a new forklift binds it at once"),
            refused && ready.is_some() && answered,
            format!(
                "refused after {}, new server answered {} after its start",
                ms(refused_after),
                ms(answered_after)
            ),
        );
        sec.check(
            format!("{sockets}: no failure before the kill"),
            before.is_empty(),
            format!("{} failed", before.len()),
        );
        s2.stop(Duration::from_secs(10));
        server.kill_all();
    }
    sec.tables.push((String::new(), t));
    sec.note(
        "Failures after the kill are expected: the workers drain and exit when their master \
         dies, so requests in flight then, and connections made once the port is closed, fail.",
    );
    sec
}
