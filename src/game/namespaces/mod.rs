//! The namespaces the `weft` binary serves; each doubles as an example of the room API.
//!
//! - `battle`: the full example of the EdgeBase Rooms server guide, hook for hook.

pub mod battle;

use super::Namespaces;

/// Every shipped namespace, registered with its options.
pub fn shipped() -> Namespaces {
    let mut namespaces = Namespaces::new();
    let registered = namespaces
        .register("battle", battle::options(), battle::factory())
        .map(|_| ());
    // The shipped options are constants inside their ranges; a failure is a bug caught by tests.
    if let Err(e) = registered {
        tracing::error!(error = %e, "a shipped namespace failed to register");
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
        assert_eq!(names, vec!["battle"]);
    }
}
