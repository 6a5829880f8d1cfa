//! sandboxd: the daemon inside each sandbox. It connects out to the server's sandbox endpoint
//! with a one-time bootstrap token, then runs commands, PTYs, file reads and writes and the
//! agent runners the server asks for, streaming their output back. It never holds a
//! credential: every request out goes through the gateway.
//!
//! Status: the protocol and runners arrive with issue 3; this binary only says so.

fn main() -> std::process::ExitCode {
    eprintln!("error: sandboxd is not implemented yet (see the open issue on sandboxes)");
    std::process::ExitCode::FAILURE
}
