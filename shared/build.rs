//! `sqlx::migrate!` embeds `migrations/` when this crate compiles, and Cargo reruns a macro only
//! when a file it already knows about changes: without this, a new migration is not in the binary
//! or the tests until some source file changes. The build script sqlx recommends.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
