//! What makes `forklift` installable as a tool: its version line (with the git commit it was
//! built from, see `build.rs`), shell completions and a manual page, all generated from the
//! one clap definition.

use clap::CommandFactory;

/// `forklift --version`: the crate version and the commit (`unknown` outside a git checkout,
/// e.g. built from a crate package).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FORKLIFT_GIT_COMMIT"),
    ")"
);

#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// `forklift completions SHELL`: the completion script on stdout.
pub fn completions(args: CompletionArgs) -> Result<String, String> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut crate::Cli::command(), "forklift", &mut out);
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The page of this subcommand (`forklift man serve`) instead of the overview
    #[arg(value_name = "SUBCOMMAND")]
    subcommand: Option<String>,
}

/// `forklift man [SUBCOMMAND]`: the manual page (roff) on stdout, with each option's
/// `FORKLIFT_*` environment variable.
pub fn man(args: ManArgs) -> Result<String, String> {
    let cmd = crate::settings::with_env(crate::Cli::command());
    let page = match &args.subcommand {
        None => cmd,
        Some(name) => {
            let sub = cmd
                .find_subcommand(name)
                .ok_or_else(|| format!("no subcommand {name}: see forklift --help for the list"))?;
            let full = format!("forklift-{name}");
            sub.clone().name(full.clone()).display_name(full)
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}
