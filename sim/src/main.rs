//! sidelog-sim: the deterministic fault-injection simulator (see the simulator issue).
//!
//! A shell for now: the workspace member exists so that the layout of DESIGN.md holds; the
//! simulator itself drives sidelog's own journal, modes, delivery and replay code.

fn main() {
    eprintln!("sidelog-sim: the simulator is not built yet; see the project's issue tracker");
    std::process::exit(2);
}
