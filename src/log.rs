//! The crate's log lines: one line each on stderr, all silenced by `OCRVL_QUIET` (read once,
//! by [`EnvFlags::quiet_from_env`]). Errors that end a command-line program are not log lines
//! and go to stderr directly.

use std::fmt::Display;
use std::sync::OnceLock;

use crate::config::EnvFlags;

/// Whether log lines are printed (`OCRVL_QUIET` unset).
pub fn enabled() -> bool {
    static QUIET: OnceLock<bool> = OnceLock::new();
    !*QUIET.get_or_init(EnvFlags::quiet_from_env)
}

/// Prints `line` on stderr unless `OCRVL_QUIET` is set.
pub fn info(line: impl Display) {
    if enabled() {
        eprintln!("{line}");
    }
}

/// Prints `line` on stderr even under `OCRVL_QUIET`: for what an operator must see (an engine
/// that can serve nothing more).
pub fn always(line: impl Display) {
    eprintln!("{line}");
}
