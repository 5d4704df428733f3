//! The MySQL/MariaDB store. Under construction: every URL is refused until it lands.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::store::Store;
use crate::url::StoreUrl;

/// Opens the store a `mysql://` URL names.
pub(crate) async fn open(url: &mut StoreUrl) -> Result<Arc<dyn Store>> {
    Err(Error::config(format!(
        "the MySQL/MariaDB store ({:?}) is under construction in this build",
        url.redacted()
    )))
}
