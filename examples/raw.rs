//! The raw form: each worker gets its listeners as std sockets and runs any code. Here a
//! blocking line server answers each connection's first line with the worker that read it.
//!
//! Shows `Prefork::run`, `Worker::ready`, and the three ways of starting workers.
//!
//! ```text
//! cargo run --example raw -- 127.0.0.1:7000 [fork|exec|command]
//! echo hi | nc 127.0.0.1 7000
//! ```
//!
//! `command` starts workers with `Spawn::command` (fasthttp's `CommandProducer`): this same
//! binary, with `RAW_SPAWNED_BY=producer` in its environment.

use std::io::{BufRead, BufReader, Write};
use std::process::Command;

use forklift::{Listener, Prefork, Spawn};

fn main() -> forklift::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".to_string());
    let mode = args.next().unwrap_or_else(|| "fork".to_string());
    let spawn = match mode.as_str() {
        "exec" => Spawn::Exec,
        "command" => {
            let (addr, mode) = (addr.clone(), mode.clone());
            Spawn::command(move |_slot| {
                let exe = std::env::current_exe().expect("the path of this binary");
                let mut cmd = Command::new(exe);
                cmd.arg(&addr).arg(&mode).env("RAW_SPAWNED_BY", "producer");
                cmd
            })
        }
        _ => Spawn::Fork,
    };
    Prefork::new()
        .workers(2)
        .listen(&addr)?
        .spawn(spawn)
        .on_event(|event| {
            if let forklift::Event::Listening { addresses } = event {
                println!("listening on {}", addresses.join(", "));
            }
        })
        .on_master_ready(|workers| {
            let pids: Vec<String> = workers.iter().map(|w| w.pid.to_string()).collect();
            println!("ready pids={}", pids.join(","));
            Ok(())
        })
        .run(|worker| {
            let Some(Listener::Tcp(listener)) = worker.take_listeners().into_iter().next() else {
                return Err("this example serves one TCP address".into());
            };
            let tag = format!(
                "worker={} pid={} spawned_by={}",
                worker.id(),
                std::process::id(),
                std::env::var("RAW_SPAWNED_BY").unwrap_or_else(|_| "master".into())
            );
            worker.ready()?;
            for conn in listener.incoming() {
                let mut conn = conn?;
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line)?;
                write!(conn, "{tag} echo={line}")?;
            }
            Ok(())
        })
}
