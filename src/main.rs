fn main() {
    std::process::exit(packrat::cli::main());
}
