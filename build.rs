//! The PostgreSQL tests are built as ignored, with the reason, unless
//! `PRESYNC_TEST_POSTGRES_URL` is set: a run without a server reports them as not run instead
//! of passing them.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rerun-if-env-changed=PRESYNC_TEST_POSTGRES_URL");
    if std::env::var("PRESYNC_TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
