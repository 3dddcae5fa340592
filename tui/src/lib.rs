//! The fastchat terminal UI: a full-screen chat on top of the client SDK.
//! `app` is the screen model (pure), `ui` draws it, `runner` connects it to
//! the terminal and the SDK.

mod app;
mod command;
mod runner;
mod ui;

pub use runner::run;
