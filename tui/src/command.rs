//! Slash commands: what a line typed after `/` asks for.

/// Every slash command, one line each, for `/help`.
pub const HELP: &[&str] = &[
    "/chat NAME            open the conversation with a friend or a group",
    "/add NAME             send NAME a friend request (or accept theirs)",
    "/accept NAME          accept NAME's friend request",
    "/group create NAME    make a group with you as admin",
    "/group add NAME...    add friends to the open group (admin)",
    "/kick NAME            remove NAME from the open group (admin)",
    "/image PATH           send an image to the open conversation",
    "/file PATH            send any file to the open conversation",
    "/search WORDS         search your local history",
    "/verify NAME          show the safety number to compare with NAME",
    "/help                 this list",
    "/quit                 leave (also Ctrl-C)",
    "Up/Down select a conversation, Tab completes names and paths, Esc closes this.",
];

/// A parsed slash command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Open a conversation by name.
    Chat(String),
    /// Send or accept a friend request.
    AddFriend(String),
    /// Create a group.
    GroupCreate(String),
    /// Add members to the open group.
    GroupAdd(Vec<String>),
    /// Remove a member from the open group.
    Kick(String),
    /// Send an image (`true`) or a file to the open conversation.
    Attach(String, bool),
    /// Search history.
    Search(String),
    /// Show a safety number.
    Verify(String),
    /// Show the help.
    Help,
    /// Leave.
    Quit,
}

/// Parses a line starting with `/`; `Err` holds a sentence for the user.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    let need = |what: &str| {
        if rest.is_empty() {
            Err(format!("{word} needs {what}; /help lists the commands"))
        } else {
            Ok(rest.to_string())
        }
    };
    match word {
        "/chat" => need("a name").map(Command::Chat),
        "/add" | "/accept" => need("a name").map(Command::AddFriend),
        "/group" => {
            let (sub, names) = rest.split_once(' ').unwrap_or((rest, ""));
            let names: Vec<String> = names.split_whitespace().map(str::to_string).collect();
            match (sub, names.len()) {
                ("create", 1) => Ok(Command::GroupCreate(names[0].clone())),
                ("add", n) if n > 0 => Ok(Command::GroupAdd(names)),
                _ => Err("use /group create NAME or /group add NAME...".into()),
            }
        }
        "/kick" => need("a name").map(Command::Kick),
        "/image" => need("a path").map(|p| Command::Attach(expand_home(&p), true)),
        "/file" => need("a path").map(|p| Command::Attach(expand_home(&p), false)),
        "/search" => need("words").map(Command::Search),
        "/verify" => need("a name").map(Command::Verify),
        "/help" => Ok(Command::Help),
        "/quit" | "/q" => Ok(Command::Quit),
        other => Err(format!("unknown command {other}; /help lists them")),
    }
}

/// `~` or `~/…` with the home directory put in, as a shell would.
pub fn expand_home(path: &str) -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    match path.strip_prefix('~') {
        Some(rest) if !home.is_empty() && (rest.is_empty() || rest.starts_with('/')) => {
            format!("{}{rest}", home.trim_end_matches('/'))
        }
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("/chat bob"), Ok(Command::Chat("bob".into())));
        assert_eq!(parse("/accept bob"), Ok(Command::AddFriend("bob".into())));
        assert_eq!(
            parse("/group create team"),
            Ok(Command::GroupCreate("team".into()))
        );
        assert_eq!(
            parse("/group add bob carol"),
            Ok(Command::GroupAdd(vec!["bob".into(), "carol".into()]))
        );
        assert_eq!(
            parse("/image ./a b.png"),
            Ok(Command::Attach("./a b.png".into(), true))
        );
        assert_eq!(parse("/quit"), Ok(Command::Quit));
        assert!(parse("/chat").unwrap_err().contains("needs a name"));
        assert!(parse("/nope").unwrap_err().contains("/help"));
        assert!(parse("/group delete x").is_err());
        assert_eq!(HELP.len(), 13);
    }
}
