//! Providers that capture a backup's data: `files` (portable packed copy).

pub mod files;
