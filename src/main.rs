fn main() {
    std::process::exit(packrat::commands::main());
}
