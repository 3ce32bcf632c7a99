//! The batch endpoint of `serving` (planned; nothing here works yet).
//!
//! It will sit at zero replicas until a batch arrives, read an input CSV, write an output CSV
//! with a `prediction` column beside the input, upload it to a dataset through `object_store`,
//! and record each batch run so runs can be listed and compared.
