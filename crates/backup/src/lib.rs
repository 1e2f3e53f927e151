//! Per-tenant offline backups: an encrypted (AES-256-GCM), checksummed archive of a tenant's
//! resources with their history, its audit chain and its users; verified before restore.
