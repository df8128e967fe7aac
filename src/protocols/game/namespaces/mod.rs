//! The namespaces the `weft` binary serves; each doubles as an example of the room API.
//!
//! - `battle`: the full example of the EdgeBase Rooms server guide, hook for hook.
//! - `tictactoe`: a two-player turn-based game on named (persisted) timers, with a join gate,
//!   lock/unlock and lobby metadata.
//! - `movement`: real-time movement on the simulation tick, the patch rate and the clock.

pub mod battle;
pub mod movement;
pub mod tictactoe;

use super::Namespaces;

/// Every shipped namespace, registered with its options.
pub fn shipped() -> Namespaces {
    let mut namespaces = Namespaces::new();
    let shipped = [
        ("battle", battle::options(), battle::factory()),
        ("tictactoe", tictactoe::options(), tictactoe::factory()),
        ("movement", movement::options(), movement::factory()),
    ];
    for (name, options, factory) in shipped {
        // The shipped options are constants inside their ranges; a failure is a bug caught by
        // tests.
        if let Err(e) = namespaces.register(name, options, factory) {
            tracing::error!(namespace = name, error = %e, "a shipped namespace failed to register");
        }
    }
    namespaces
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_shipped_namespace_registers() {
        let ns = super::shipped();
        let mut names: Vec<&str> = ns.names().collect();
        names.sort_unstable();
        assert_eq!(names, vec!["battle", "movement", "tictactoe"]);
    }
}
