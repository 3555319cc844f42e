//! Rebuild the kernel programs when `bpf-linker` changes: the linker is an undeclared tool
//! dependency that cargo cannot track on its own.

fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
