//! Completion for `kubectl pipedream <TAB>`. kubectl (1.26+) completes a plugin's arguments by running
//! `kubectl_complete-<plugin> <args…> <word being completed>` and reading cobra's `__complete` answer: one candidate
//! per line (a tab, then its description), then `:<directive>`. Installed (or symlinked) as
//! `kubectl_complete-pipedream`, the binary answers that; `__complete` as the first argument does the same, as
//! cobra programs do. Candidates come from the clap command tree, so they never drift from the real commands.

use clap::Command;

/// cobra's `ShellCompDirectiveNoFileComp`: do not offer file names.
const NO_FILE_COMP: u8 = 4;
/// cobra's `ShellCompDirectiveDefault`: the shell may offer file names.
const DEFAULT: u8 = 0;

/// The answer to one completion request.
#[derive(Debug, PartialEq, Eq)]
pub struct Completions {
    /// `candidate` or `candidate\tdescription`, in order.
    pub candidates: Vec<String>,
    /// cobra's directive.
    pub directive: u8,
}

impl Completions {
    /// cobra's wire form: candidates, then `:<directive>`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.candidates {
            out.push_str(c);
            out.push('\n');
        }
        out.push_str(&format!(":{}\n", self.directive));
        out
    }
}

/// Candidates for the last of `words` (the word being completed, possibly empty), after the others.
/// Long because it is one walk over the words, with a short arm per kind of position (subcommand, flag, flag
/// value, positional).
pub fn complete(root: &Command, words: &[String]) -> Completions {
    let (current, done) = match words.split_last() {
        Some((last, rest)) => (last.as_str(), rest),
        None => ("", &[][..]),
    };
    let mut cmd = root;
    let mut positional = 0usize;
    let mut expects_value: Option<&clap::Arg> = None;
    for w in done {
        if expects_value.take().is_some() {
            continue;
        }
        if let Some(arg) = flag(cmd, w) {
            let inline = w.contains('=');
            if takes_value(arg) && !inline {
                expects_value = Some(arg);
            }
        } else if let Some(sub) = cmd.find_subcommand(w) {
            cmd = sub;
            positional = 0;
        } else {
            positional += 1;
        }
    }
    if let Some(arg) = expects_value {
        return values(arg, current);
    }
    if current.starts_with('-') {
        let mut candidates = Vec::new();
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let help = about(a.get_help());
            if let Some(l) = a.get_long() {
                push(&mut candidates, &format!("--{l}"), &help, current);
            }
            if let Some(s) = a.get_short() {
                push(&mut candidates, &format!("-{s}"), &help, current);
            }
        }
        return Completions {
            candidates,
            directive: NO_FILE_COMP,
        };
    }
    if cmd.has_subcommands() {
        let mut candidates = Vec::new();
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            push(
                &mut candidates,
                s.get_name(),
                &about(s.get_about()),
                current,
            );
        }
        return Completions {
            candidates,
            directive: NO_FILE_COMP,
        };
    }
    match cmd.get_positionals().nth(positional) {
        Some(arg) => values(arg, current),
        None => Completions {
            candidates: Vec::new(),
            directive: NO_FILE_COMP,
        },
    }
}

/// The flag `word` names (`--name`, `--name=value`, `-n`).
fn flag<'c>(cmd: &'c Command, word: &str) -> Option<&'c clap::Arg> {
    if let Some(long) = word.strip_prefix("--") {
        let long = long.split_once('=').map_or(long, |(l, _)| l);
        return cmd.get_arguments().find(|a| a.get_long() == Some(long));
    }
    let short = word.strip_prefix('-')?.chars().next()?;
    cmd.get_arguments().find(|a| a.get_short() == Some(short))
}

fn takes_value(arg: &clap::Arg) -> bool {
    arg.get_num_args().is_none_or(|n| n.takes_values())
        && !matches!(
            arg.get_action(),
            clap::ArgAction::SetTrue
                | clap::ArgAction::SetFalse
                | clap::ArgAction::Count
                | clap::ArgAction::Help
                | clap::ArgAction::Version
        )
}

/// An argument's value: its possible values, or file names where it is a path.
fn values(arg: &clap::Arg, current: &str) -> Completions {
    let possible = arg.get_possible_values();
    if possible.is_empty() {
        let path = matches!(
            arg.get_value_hint(),
            clap::ValueHint::FilePath | clap::ValueHint::AnyPath | clap::ValueHint::DirPath
        );
        return Completions {
            candidates: Vec::new(),
            directive: if path { DEFAULT } else { NO_FILE_COMP },
        };
    }
    let mut candidates = Vec::new();
    for v in possible.iter().filter(|v| !v.is_hide_set()) {
        push(&mut candidates, v.get_name(), &about(v.get_help()), current);
    }
    Completions {
        candidates,
        directive: NO_FILE_COMP,
    }
}

fn about(s: Option<&clap::builder::StyledStr>) -> String {
    s.map(|s| s.to_string().lines().next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn push(out: &mut Vec<String>, candidate: &str, help: &str, prefix: &str) {
    if candidate.starts_with(prefix) {
        out.push(if help.is_empty() {
            candidate.to_string()
        } else {
            format!("{candidate}\t{help}")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    fn names(c: &Completions) -> Vec<&str> {
        c.candidates
            .iter()
            .map(|c| c.split('\t').next().unwrap_or_default())
            .collect()
    }

    #[test]
    fn subcommands_flags_and_values_come_from_the_real_commands() {
        let cli = crate::cli::Cli::command();
        let c = complete(&cli, &words(&["st"]));
        assert_eq!(names(&c), ["status"]);
        assert_eq!(c.directive, NO_FILE_COMP);
        assert!(c.candidates[0].contains('\t'), "with its description");
        let c = complete(&cli, &words(&[""]));
        for sub in [
            "run",
            "status",
            "sync",
            "check",
            "render",
            "version",
            "completion",
        ] {
            assert!(names(&c).contains(&sub), "{sub} in {c:?}");
        }
        let c = complete(&cli, &words(&["status", "--names"]));
        assert_eq!(names(&c), ["--namespace"]);
        let c = complete(&cli, &words(&["status", "-n", "team-a", "-o", ""]));
        assert_eq!(names(&c), ["table", "json", "yaml"]);
        let c = complete(&cli, &words(&["status", "--output=json", "gh", "--"]));
        assert!(names(&c).contains(&"--kubeconfig"), "{c:?}");
        let c = complete(&cli, &words(&["completion", "z"]));
        assert_eq!(names(&c), ["zsh"]);
        let c = complete(&cli, &words(&["render", "-f", ""]));
        assert_eq!(c.directive, DEFAULT, "a file name is offered by the shell");
        assert_eq!(
            complete(&cli, &words(&["version", ""])).candidates,
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_wire_form_is_cobras() {
        let c = Completions {
            candidates: vec!["status\tList".into()],
            directive: NO_FILE_COMP,
        };
        assert_eq!(c.render(), "status\tList\n:4\n");
    }
}
