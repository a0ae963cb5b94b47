//! The guide's "bring your own event loop" page shows
//! examples/blocking_echo.rs; run it here so it keeps working, not only
//! compiling.
#[allow(dead_code)]
#[path = "../examples/blocking_echo.rs"]
mod blocking_echo;

#[test]
fn blocking_echo_example_round_trips_and_closes_cleanly() {
    blocking_echo::main().unwrap();
}
