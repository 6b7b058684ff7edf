//! The `redraft` binary: all logic lives in [`redraft::cli`].

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(redraft::cli::main())
}
