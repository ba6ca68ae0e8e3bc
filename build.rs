// Embedded migrations (sqlx::migrate!) must be re-read when a file under migrations/ changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
