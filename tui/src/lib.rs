//! The fastchat terminal UI: a full-screen chat on top of the client SDK.
//! `app` is the screen model (pure), `ui` draws it, `preview` turns received
//! images into inline pictures, `runner` connects it to the terminal and the SDK.

mod app;
mod command;
mod preview;
mod runner;
mod ui;

pub use runner::run;
