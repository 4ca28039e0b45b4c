//! The web pages and modules, embedded at build time (build.rs) so one
//! binary is the whole install.

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// The names of the embedded pages and modules.
pub(crate) fn asset_names() -> impl Iterator<Item = &'static str> {
    embedded::WEB_ASSETS.iter().map(|(n, _)| *n)
}

/// A page or module. `MEDRELAY_WEB_DIR` (development only) serves `web/`
/// from disk so page work needs no rebuild; names are flat, so nothing
/// outside that directory can be reached.
pub(crate) fn asset(name: &str) -> Option<std::borrow::Cow<'static, [u8]>> {
    if let Some(dir) = std::env::var_os("MEDRELAY_WEB_DIR") {
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return None;
        }
        return std::fs::read(std::path::Path::new(&dir).join(name))
            .ok()
            .map(std::borrow::Cow::Owned);
    }
    embedded::WEB_ASSETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| std::borrow::Cow::Borrowed(*b))
}
