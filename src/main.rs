fn main() -> std::process::ExitCode {
    medrelay::run()
}
