//! Where every setting comes from: flags, then `FORKLIFT_<OPTION>` environment variables,
//! then the configuration file (`--config PATH` or `FORKLIFT_CONFIG`), then the platform's
//! `PORT` and `WEB_CONCURRENCY`, then the built-in defaults.
//!
//! Nothing here lists forklift's options: the clap definition in `main.rs` is the one source.
//! [`parse`] walks every subcommand's arguments, gives each long option an
//! `env("FORKLIFT_...")`, and feeds the file's value in as that argument's default, so clap
//! itself resolves flag > env > file > default. Each file value is first checked with the
//! argument's own value parser, so a bad one is reported with the file, line and key.
//!
//! The file is TOML. Keys are the long option names (`graceful-timeout`); top-level keys
//! apply to every subcommand that has the option, and a `[serve]` or `[run]` table (any
//! subcommand's name) holds keys for that subcommand only, taking precedence over the top
//! level. Booleans are TOML booleans, durations numbers of seconds, repeatable options arrays.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command};

/// The environment variable naming the configuration file, as `--config` does.
pub const CONFIG_ENV: &str = "FORKLIFT_CONFIG";

/// The option naming the configuration file; it is read before anything else is parsed.
const CONFIG_FLAG: &str = "config";

/// Long options that are no setting (nothing a file or an environment variable could hold).
const NOT_SETTINGS: &[&str] = &["help", "version", CONFIG_FLAG];

/// The settings file's values for one scope, by argument id, as strings clap parses.
type Values = BTreeMap<String, Vec<String>>;

/// A configuration file, read and checked against the clap definition.
#[derive(Debug, Default)]
struct FileSettings {
    /// Top-level keys (long option names): for every subcommand that has the option.
    shared: Values,
    /// `[name]` tables: for that subcommand only.
    scoped: BTreeMap<String, Values>,
    /// The line of each key, as errors name it (`workers`, `serve.tls-cert`).
    lines: BTreeMap<String, usize>,
}

impl FileSettings {
    fn value(&self, scope: &str, id: &str) -> Option<&Vec<String>> {
        self.scoped
            .get(scope)
            .and_then(|v| v.get(id))
            .or_else(|| self.shared.get(id))
    }

    /// The key [`value`](FileSettings::value) took its value from, as errors name it, and
    /// its line.
    fn origin(&self, scope: &str, id: &str) -> (String, usize) {
        let key = match self.scoped.get(scope).is_some_and(|v| v.contains_key(id)) {
            true => format!("{scope}.{id}"),
            false => id.to_string(),
        };
        let line = self.lines.get(&key).copied().unwrap_or(0);
        (key, line)
    }
}

/// A file value that won (no flag or variable gave its option), as the argument that would
/// have given it.
struct FileArg {
    /// `run`'s COMMAND, which goes after `--`.
    positional: bool,
    arg: OsString,
    /// The key and line it came from, for an error.
    key: String,
    line: usize,
}

/// Parses `argv` as `T` (the CLI's clap definition) with the environment, the configuration
/// file and the platform defaults folded in. Exits with clap's usage error, or with the
/// file's error naming its line and key: status 2, or 1 for `forklift check` (whose every
/// problem found is a 1).
pub fn parse_or_exit<T: clap::FromArgMatches + clap::CommandFactory>(argv: Vec<OsString>) -> T {
    let checking = argv.get(1).is_some_and(|a| a == "check");
    let code = if checking { 1 } else { 2 };
    match load::<T>(&argv) {
        Ok((parsed, _)) => parsed,
        Err(Error::Clap(e)) if !e.use_stderr() => e.exit(),
        Err(Error::Clap(e)) => {
            let _ = e.print();
            std::process::exit(code)
        }
        Err(Error::File(message)) => {
            eprintln!("forklift: error: {message}");
            std::process::exit(code)
        }
    }
}

/// Why the settings could not be read.
#[derive(Debug)]
pub enum Error {
    /// A bad flag or environment value: clap's own error.
    Clap(clap::Error),
    /// A configuration file that cannot be read or holds a bad key or value.
    File(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Clap(e) => f.write_str(&clap_message(e)),
            Error::File(m) => f.write_str(m),
        }
    }
}

/// As [`parse`], from `argv`, returning errors: the typed settings and clap's matches (which
/// say where each value came from, and its raw text).
pub fn load<T: clap::FromArgMatches + clap::CommandFactory>(
    argv: &[OsString],
) -> Result<(T, ArgMatches), Error> {
    let (cmd, file, path) = layered::<T>(argv)?;
    let matches = cmd
        .clone()
        .try_get_matches_from(argv)
        .map_err(Error::Clap)?;
    // clap checks `requires` (--tls-cert needs --tls-key) on what was given, not on defaults:
    // parse again with the file's values that won as flags, so the file meets the same rules.
    let from_file = file_flags(&cmd, &matches, &file);
    let matches = if from_file.is_empty() {
        matches
    } else {
        let (flags, command): (Vec<_>, Vec<_>) = from_file.iter().partition(|f| !f.positional);
        let strict = layer(
            T::command(),
            &FileSettings::default(),
            &platform_defaults().map_err(Error::File)?,
            true,
        );
        let parse = |flags: &[&FileArg]| {
            let mut with_file = argv.to_vec();
            let at = with_file
                .iter()
                .position(|a| a == "--")
                .unwrap_or(with_file.len());
            with_file.splice(at..at, flags.iter().map(|f| f.arg.clone()));
            if !command.is_empty() {
                with_file.push("--".into());
                with_file.extend(command.iter().map(|f| f.arg.clone()));
            }
            strict.clone().try_get_matches_from(&with_file)
        };
        parse(&flags).map_err(|e| {
            // Name the key that broke the rule: the first file value whose addition to the
            // flags and environment makes the parse fail (on the error path only). If they
            // fail alone, the file is not to blame: clap's own error.
            if let Err(e) = parse(&[]) {
                return Error::Clap(e);
            }
            let shown = path.as_deref().map(Path::display);
            let shown = shown.map(|p| p.to_string()).unwrap_or_default();
            let at = (1..=flags.len())
                .find(|&n| parse(&flags[..n]).is_err())
                .map(|n| format!(":{}: {}", flags[n - 1].line, flags[n - 1].key))
                .unwrap_or_default();
            Error::File(format!(
                "{shown}{at}: {} (with the flags and environment given)",
                clap_message(&e)
            ))
        })?
    };
    let parsed = T::from_arg_matches(&matches).map_err(Error::Clap)?;
    Ok((parsed, matches))
}

/// The file's values that `matches` took (no flag or variable gave the option), as the
/// arguments that would have given them.
fn file_flags(cmd: &Command, matches: &ArgMatches, file: &FileSettings) -> Vec<FileArg> {
    let (mut cmd, mut matches) = (cmd, matches);
    while let Some((name, sub)) = matches.subcommand() {
        match cmd.find_subcommand(name) {
            Some(c) => (cmd, matches) = (c, sub),
            None => break,
        }
    }
    let scope = cmd.get_name();
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(key) = key_of(arg) else { continue };
        let Some(values) = file.value(scope, &key) else {
            continue;
        };
        if matches.value_source(arg.get_id().as_str())
            != Some(clap::parser::ValueSource::DefaultValue)
        {
            continue;
        }
        let (key, line) = file.origin(scope, &key);
        let file_arg = |positional, arg: String| FileArg {
            positional,
            arg: arg.into(),
            key: key.clone(),
            line,
        };
        match arg.get_long() {
            None => out.extend(values.iter().map(|v| file_arg(true, v.clone()))),
            Some(long) if matches!(arg.get_action(), ArgAction::SetTrue) => {
                if values.iter().any(|v| v == "true") {
                    out.push(file_arg(false, format!("--{long}")));
                }
            }
            Some(long) => out.extend(
                values
                    .iter()
                    .map(|v| file_arg(false, format!("--{long}={v}"))),
            ),
        }
    }
    out
}

/// The clap command of `T` with the environment variables, the file named in `argv` (or by
/// `FORKLIFT_CONFIG`) and the platform defaults as its arguments' defaults.
pub fn command<T: clap::CommandFactory>(argv: &[OsString]) -> Result<Command, Error> {
    layered::<T>(argv).map(|(cmd, _, _)| cmd)
}

fn layered<T: clap::CommandFactory>(
    argv: &[OsString],
) -> Result<(Command, FileSettings, Option<PathBuf>), Error> {
    let base = T::command();
    let path = config_path(argv);
    let file = match &path {
        Some(path) => read_file(path, &base).map_err(Error::File)?,
        None => FileSettings::default(),
    };
    let platform = platform_defaults().map_err(Error::File)?;
    let cmd = layer(base, &file, &platform, false);
    Ok((cmd, file, path))
}

/// `cmd` with each long option's environment variable (for the manual page).
pub fn with_env(cmd: Command) -> Command {
    layer(cmd, &FileSettings::default(), &Values::new(), true)
}

/// The environment variable each long option is read from.
pub fn env_name(long: &str) -> String {
    format!("FORKLIFT_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// `--config PATH`, `--config=PATH` (before any `--`), else `FORKLIFT_CONFIG`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG_FLAG}");
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == flag {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = a.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `PORT` and `WEB_CONCURRENCY`, the platform conventions (Heroku, gunicorn): the listen
/// address and the worker count when nothing else gives them.
fn platform_defaults() -> Result<Values, String> {
    let mut values = Values::new();
    if let Some(port) = std::env::var_os("PORT").filter(|v| !v.is_empty()) {
        let port = port.to_string_lossy();
        port.parse::<u16>()
            .map_err(|_| format!("PORT={port:?} is not a port number (0 to 65535)"))?;
        values.insert("listen".into(), vec![format!("0.0.0.0:{port}")]);
    }
    if let Some(n) = std::env::var_os("WEB_CONCURRENCY").filter(|v| !v.is_empty()) {
        let n = n.to_string_lossy();
        match n.parse::<usize>() {
            Ok(n) if n > 0 => values.insert("workers".into(), vec![n.to_string()]),
            _ => {
                return Err(format!(
                    "WEB_CONCURRENCY={n:?} is not a worker count (1 or more)"
                ))
            }
        };
    }
    Ok(values)
}

/// Gives every long option of every subcommand its environment variable and its file (or
/// platform) default. Without `strict`, `requires` is not checked (a file value counts as
/// a default, which `requires` ignores): [`load`] checks it on a second parse.
fn layer(cmd: Command, file: &FileSettings, platform: &Values, strict: bool) -> Command {
    let name = cmd.get_name().to_string();
    let has_file_command = file.value(&name, "command").is_some();
    let mut cmd = cmd.mut_args(|arg| {
        let Some(key) = key_of(&arg) else {
            return arg;
        };
        let Some(long) = arg.get_long().map(str::to_string) else {
            // The one positional that can be a setting: `run`'s COMMAND.
            return match file.value(&name, &key) {
                Some(values) => arg.required(false).default_values(values.clone()),
                None => arg,
            };
        };
        let mut arg = if strict {
            arg
        } else {
            arg.requires(clap::builder::Resettable::<clap::Id>::Reset)
        };
        arg = if arg.get_env().is_none() {
            arg.env(env_name(&long))
        } else {
            arg
        };
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            // FORKLIFT_REUSE_PORT=1 (or yes, on, true; 0, no, off, false) as for any flag
            // set from the environment.
            arg = arg.value_parser(clap::builder::BoolishValueParser::new());
        }
        if let Some(values) = file.value(&name, &key).or_else(|| platform.get(&key)) {
            arg = arg.required(false).default_values(values.clone());
        }
        arg
    });
    if has_file_command {
        cmd = cmd.arg_required_else_help(false);
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for sub in names {
        cmd = cmd.mut_subcommand(sub, |s| layer(s, file, platform, strict));
    }
    cmd
}

/// Every subcommand at any depth that takes settings, with its name (`check serve` is
/// `serve`).
fn leaves(cmd: &Command) -> Vec<&Command> {
    let mut out = Vec::new();
    for sub in cmd.get_subcommands() {
        out.push(sub);
        out.extend(leaves(sub));
    }
    out
}

/// The key a file uses for `arg`: its long name, or `command` for `run`'s COMMAND.
fn key_of(arg: &Arg) -> Option<String> {
    match arg.get_long() {
        Some(long) if NOT_SETTINGS.contains(&long) => None,
        Some(long) => Some(long.to_string()),
        None if arg.get_id() == "command" => Some("command".into()),
        None => None,
    }
}

/// Reads and checks the file: every key an option, every value of the right type and
/// accepted by the option's value parser.
fn read_file(path: &Path, cmd: &Command) -> Result<FileSettings, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the configuration file {shown}: {e} (given by --config or {CONFIG_ENV})"
        )
    })?;
    let doc = toml_edit::ImDocument::parse(text.as_str()).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(":{}", line_of(&text, s.start)))
            .unwrap_or_default();
        format!(
            "{shown}{at}: not valid TOML: {}",
            e.message().trim().replace('\n', "; ")
        )
    })?;
    // Which subcommands take each key (the same long option may be in several).
    let mut owners: BTreeMap<String, Vec<(&Command, &Arg)>> = BTreeMap::new();
    let subcommands = leaves(cmd);
    for sub in &subcommands {
        for arg in sub.get_arguments() {
            if let Some(key) = key_of(arg) {
                owners.entry(key).or_default().push((sub, arg));
            }
        }
    }
    let scopes: Vec<&str> = subcommands
        .iter()
        .filter(|s| s.get_arguments().any(|a| key_of(a).is_some()))
        .map(|s| s.get_name())
        .collect();
    let mut settings = FileSettings::default();
    let table = doc.as_table();
    for (key, item) in table.iter() {
        let line = line_at(&text, table.get_key_value(key).and_then(|(k, _)| k.span()));
        if let Some(inner) = item.as_table_like().filter(|_| scopes.contains(&key)) {
            let mut values = Values::new();
            for (inner_key, inner_item) in inner.iter() {
                let line = line_at(
                    &text,
                    inner.get_key_value(inner_key).and_then(|(k, _)| k.span()),
                );
                let full = format!("{key}.{inner_key}");
                let Some(found) = owners.get(inner_key) else {
                    return Err(unknown(&shown, line, &full, inner_key, owners.keys()));
                };
                let Some(&(sub, arg)) = found.iter().find(|(s, _)| s.get_name() == key) else {
                    return Err(format!(
                        "{shown}:{line}: {full}: `forklift {key}` has no option {inner_key} \
                         (move it out of the [{key}] table)"
                    ));
                };
                values.insert(
                    inner_key.to_string(),
                    file_values(inner_item, sub, arg)
                        .map_err(|e| format!("{shown}:{line}: {full}: {e}"))?,
                );
                settings.lines.insert(full, line);
            }
            settings.scoped.insert(key.to_string(), values);
            continue;
        }
        let Some(found) = owners.get(key) else {
            let tables: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            return Err(unknown(
                &shown,
                line,
                key,
                key,
                owners.keys().chain(tables.iter()),
            ));
        };
        let mut strings = None;
        for &(sub, arg) in found {
            strings = Some(
                file_values(item, sub, arg).map_err(|e| format!("{shown}:{line}: {key}: {e}"))?,
            );
        }
        settings
            .shared
            .insert(key.to_string(), strings.unwrap_or_default());
        settings.lines.insert(key.to_string(), line);
    }
    Ok(settings)
}

/// The error for a key that is no option, with the closest one.
fn unknown<'a>(
    file: &dyn std::fmt::Display,
    line: usize,
    shown: &str,
    key: &str,
    known: impl Iterator<Item = &'a String>,
) -> String {
    let wanted = key.replace('_', "-");
    let best = known
        .map(|k| (strsim::jaro_winkler(&wanted, k), k))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score > 0.8)
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default();
    format!(
        "{file}:{line}: unknown key {shown}{best}; keys are the long option names, as in \
         `forklift serve --help` (docs/configuration.md)"
    )
}

/// A TOML value as the strings clap would have been given, checked with `arg`'s parser.
fn file_values(item: &toml_edit::Item, sub: &Command, arg: &Arg) -> Result<Vec<String>, String> {
    let value = item.as_value().ok_or("expected a value, found a table")?;
    let is_flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let repeatable = matches!(arg.get_action(), ArgAction::Append)
        || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    // An option whose value may be left out (`--access-log [PATH]`): true gives it without
    // one, false leaves it out.
    let value_optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
    if let (true, Some(on)) = (value_optional, value.as_bool()) {
        // (clap has no getter for the missing value; `-`, "the default place", is forklift's
        // for every such option.)
        return Ok(if on {
            vec!["-".to_string()]
        } else {
            Vec::new()
        });
    }
    if is_flag {
        return match value.as_bool() {
            Some(b) => Ok(vec![b.to_string()]),
            None => Err(format!(
                "expected true or false, found {}",
                type_name(value)
            )),
        };
    }
    let strings = match value.as_array() {
        Some(_) if !repeatable => {
            return Err("expected one value, found an array (this option takes one)".into())
        }
        Some(array) => array.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
        None => vec![scalar(value)?],
    };
    for s in &strings {
        check_with_parser(sub, arg, s)?;
    }
    Ok(strings)
}

/// A string, number (durations: seconds) as text.
fn scalar(value: &toml_edit::Value) -> Result<String, String> {
    use toml_edit::Value;
    match value {
        Value::String(s) => Ok(s.value().clone()),
        Value::Integer(i) => Ok(i.value().to_string()),
        Value::Float(f) => Ok(f.value().to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            type_name(other)
        )),
    }
}

fn type_name(value: &toml_edit::Value) -> &'static str {
    use toml_edit::Value;
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// Runs `arg`'s own value parser on `value`, as clap would on the command line.
fn check_with_parser(sub: &Command, arg: &Arg, value: &str) -> Result<(), String> {
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    let mut probe = Arg::new(arg.get_id().clone())
        .long(long.to_string())
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Set);
    if let Some(names) = arg.get_value_names() {
        probe = probe.value_names(names.to_vec());
    }
    Command::new(sub.get_name().to_string())
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([OsString::from(format!("--{long}={value}"))])
        .map(drop)
        .map_err(|e| clap_message(&e))
}

/// A clap error on one line, without the usage and help hints.
fn clap_message(e: &clap::Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

fn line_at(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    span.map_or(0, |s| line_of(text, s.start))
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The raw value of every setting of subcommand `matches`, to say what a reload changed.
pub fn raw_values(cmd: &Command, matches: &ArgMatches) -> BTreeMap<String, Vec<OsString>> {
    cmd.get_arguments()
        .filter_map(|arg| {
            let key = key_of(arg)?;
            let raw = matches.try_get_raw(arg.get_id().as_str()).ok().flatten()?;
            Some((key, raw.map(OsStr::to_os_string).collect()))
        })
        .collect()
}

/// The subcommand `path` (`["serve"]`, `["check", "serve"]`) of `cmd`.
pub fn find_subcommand<'a>(cmd: &'a Command, path: &[&str]) -> Option<&'a Command> {
    path.iter().try_fold(cmd, |c, name| c.find_subcommand(name))
}

/// The table of every key in docs/configuration.md, made from the clap definition (a test
/// keeps the doc equal to it; `UPDATE_DOCS=1` rewrites it).
#[cfg(test)]
pub fn keys_table(cmd: &Command) -> String {
    let mut rows: BTreeMap<String, (String, Vec<String>, String)> = BTreeMap::new();
    for sub in leaves(cmd) {
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(key) = key_of(arg) else { continue };
            let env = match arg.get_long() {
                Some(long) => arg
                    .get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_else(|| env_name(long)),
                None => "(none)".into(),
            };
            let help = arg
                .get_help()
                .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
                .unwrap_or_default();
            let row = rows.entry(key).or_insert_with(|| (env, Vec::new(), help));
            let name = sub.get_name().to_string();
            if !row.1.contains(&name) {
                row.1.push(name);
            }
        }
    }
    let mut out = String::from("| key | environment | commands | meaning |\n|---|---|---|---|\n");
    for (key, (env, commands, help)) in rows {
        let env = if env == "(none)" {
            env
        } else {
            format!("`{env}`")
        };
        out.push_str(&format!(
            "| `{key}` | {env} | {} | {help} |\n",
            commands.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_long_option() {
        assert_eq!(env_name("graceful-timeout"), "FORKLIFT_GRACEFUL_TIMEOUT");
        assert_eq!(env_name("listen"), "FORKLIFT_LISTEN");
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
    }

    #[test]
    fn the_config_flag_is_found_before_the_command() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&argv(&["forklift", "serve", "--config", "f.toml"])),
            Some(PathBuf::from("f.toml"))
        );
        assert_eq!(
            config_path(&argv(&["forklift", "serve", "--config=g.toml"])),
            Some(PathBuf::from("g.toml"))
        );
        let after = config_path(&argv(&["forklift", "run", "--", "x", "--config", "h"]));
        assert_ne!(after, Some(PathBuf::from("h")));
    }

    /// docs/configuration.md lists every key, made from the clap definition; run with
    /// UPDATE_DOCS=1 to rewrite the table after adding an option.
    #[test]
    fn the_configuration_doc_lists_every_key() {
        use clap::CommandFactory;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- keys: begin -->\n", "<!-- keys: end -->");
        let start = doc.find(begin).expect("the keys: begin marker") + begin.len();
        let stop = doc.find(end).expect("the keys: end marker");
        let table = keys_table(&crate::Cli::command());
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let updated = format!("{}{table}{}", &doc[..start], &doc[stop..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        assert_eq!(
            doc[start..stop],
            table,
            "docs/configuration.md's key table is out of date: run UPDATE_DOCS=1 cargo test -p \
             forklift-cli --bin forklift the_configuration_doc_lists_every_key"
        );
        let example = include_str!("../../docs/forklift.example.toml");
        for line in table.lines().skip(2) {
            let key = line.split('`').nth(1).unwrap();
            assert!(
                example
                    .lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = "))),
                "docs/forklift.example.toml does not show the key {key}"
            );
        }
    }
}
