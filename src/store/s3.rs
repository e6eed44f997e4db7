//! S3 store (aws-sdk-s3): custom endpoint and path style for S3-compatible stores,
//! multipart above a threshold, SDK retries with backoff on 5xx and throttling (SlowDown).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::{check_key, Leftovers, ObjectMeta, ObjectReader, ObjectStore, PutOutcome, StoreError, StoreOptions};

/// Default size above which uploads use multipart.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 32 * 1024 * 1024;
/// Size of each part of a multipart upload.
pub const PART_SIZE: usize = 16 * 1024 * 1024;

/// Multipart uploads started longer ago than this are abandoned (a killed writer's) and are
/// aborted by the sweep; no upload of ours takes a day.
pub const ABANDONED_UPLOAD_AGE: Duration = Duration::from_secs(24 * 3600);

/// A repository under `s3://bucket/prefix`.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    multipart_threshold: u64,
}

impl S3Store {
    /// Builds a client from the default credential chain plus the given overrides.
    pub async fn new(bucket: &str, prefix: &str, opts: &StoreOptions) -> S3Store {
        let shared =
            crate::store::aws::sdk_config(opts.region.as_deref(), 5, Duration::from_secs(5), Duration::from_secs(120))
                .await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(ep) = &opts.endpoint {
            b = b.endpoint_url(ep).force_path_style(true);
        }
        S3Store {
            client: Client::from_conf(b.build()),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            multipart_threshold: opts.multipart_threshold.unwrap_or(DEFAULT_MULTIPART_THRESHOLD),
        }
    }

    /// The underlying client (tests create buckets with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn full(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() { key.to_string() } else { format!("{}/{}", self.prefix, key) })
    }

    fn strip<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix).and_then(|k| k.strip_prefix('/')).unwrap_or(full)
        }
    }

    fn err<E: std::error::Error + ProvideErrorMetadata + 'static>(
        &self,
        op: &'static str,
        key: &str,
        e: E,
    ) -> StoreError {
        // A service error says what S3 said (its code and message); the SDK's full chain
        // would append the raw response. Connection failures and timeouts keep the chain.
        let what = match e.code() {
            Some(code) => format!("{code}: {}", e.message().unwrap_or("(no message)")),
            None => DisplayErrorContext(&e).to_string(),
        };
        StoreError::Backend {
            store: self.describe(),
            op,
            key: key.to_string(),
            msg: format!("{what}; check the endpoint, credentials and that the bucket exists"),
        }
    }

    /// Aborts the multipart uploads under this store's prefix started before `cutoff`
    /// (seconds since the epoch); returns how many.
    pub async fn abort_uploads_before(&self, cutoff: i64) -> Result<usize, StoreError> {
        let prefix = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut aborted = 0;
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.err("list uploads", &prefix, e))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else { continue };
                if u.initiated().is_none_or(|t| t.secs() >= cutoff) {
                    continue;
                }
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| self.err("abort upload", self.strip(key), e))?;
                aborted += 1;
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(aborted)
    }

    async fn put_multipart(&self, key: &str, full: &str, data: Bytes) -> Result<(), StoreError> {
        let up = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| self.err("put", key, e))?;
        let upload_id = up.upload_id().unwrap_or_default().to_string();
        let res = async {
            let mut parts = Vec::new();
            for (i, chunk) in data.chunks(PART_SIZE).enumerate() {
                let n = i as i32 + 1;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .body(ByteStream::from(data.slice_ref(chunk)))
                    .send()
                    .await
                    .map_err(|e| self.err("put", key, e))?;
                parts.push(CompletedPart::builder().set_e_tag(part.e_tag().map(str::to_string)).part_number(n).build());
            }
            let done = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await;
            match done {
                Ok(_) => Ok(()),
                // A 200 whose body the SDK cannot parse is ambiguous (some S3-compatible servers
                // word the reply differently): trust it only if the object is there, whole.
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(200) => match self.head(key).await? {
                    Some(m) if m.size == data.len() as u64 => Ok(()),
                    _ => Err(self.err("put", key, e)),
                },
                Err(e) => Err(self.err("put", key, e)),
            }
        }
        .await;
        if res.is_err() {
            // Leave no invisible parts behind to be billed for.
            let _ =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(full).upload_id(&upload_id).send().await;
        }
        res
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let full = self.full(key)?;
        if data.len() as u64 > self.multipart_threshold {
            return self.put_multipart(key, &full, data).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.err("put", key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        let full = self.full(key)?;
        if self.head(key).await?.is_some() {
            return Ok(PutOutcome::Exists);
        }
        if data.len() as u64 > self.multipart_threshold {
            self.put_multipart(key, &full, data).await?;
            return Ok(PutOutcome::Created);
        }
        // If-None-Match makes the race between two writers safe on stores that support it.
        let res = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_none_match("*")
            .body(ByteStream::from(data))
            .send()
            .await;
        match res {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412) => Ok(PutOutcome::Exists),
            Err(e) => Err(self.err("put", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<ObjectReader>, StoreError> {
        let full = self.full(key)?;
        match self.client.get_object().bucket(&self.bucket).key(&full).send().await {
            Ok(out) => Ok(Some(Box::pin(out.body.into_async_read()))),
            Err(SdkError::ServiceError(se)) if se.err().is_no_such_key() => Ok(None),
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    fn retryable(&self, e: &StoreError) -> bool {
        // The SDK already retried throttling and 5xx within the request; what is left worth
        // another try is a connection that failed or a response that broke, not a refusal.
        const FINAL: [&str; 7] = [
            "AccessDenied",
            "NoSuchBucket",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "InvalidBucketName",
            "AllAccessDisabled",
            "InvalidObjectState",
        ];
        match e {
            StoreError::Backend { msg, .. } => !FINAL.iter().any(|c| msg.starts_with(c)),
            _ => false,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let full = self.full(key)?;
        match self.client.head_object().bucket(&self.bucket).key(&full).send().await {
            Ok(out) => {
                Ok(Some(ObjectMeta { key: key.to_string(), size: out.content_length().unwrap_or(0).max(0) as u64 }))
            }
            Err(SdkError::ServiceError(se)) if se.err().is_not_found() => Ok(None),
            Err(e) => Err(self.err("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let full_prefix =
            if self.prefix.is_empty() { prefix.to_string() } else { format!("{}/{}", self.prefix, prefix) };
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full_prefix).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.try_next().await.map_err(|e| self.err("list", prefix, e))? {
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(ObjectMeta { key: self.strip(k).to_string(), size: o.size().unwrap_or(0).max(0) as u64 });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn list_level(&self, prefix: &str) -> Result<super::Level, StoreError> {
        let full_prefix =
            if self.prefix.is_empty() { prefix.to_string() } else { format!("{}/{}", self.prefix, prefix) };
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut out = super::Level::default();
        while let Some(page) = pages.try_next().await.map_err(|e| self.err("list", prefix, e))? {
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.objects
                        .push(ObjectMeta { key: self.strip(k).to_string(), size: o.size().unwrap_or(0).max(0) as u64 });
                }
            }
            for p in page.common_prefixes() {
                if let Some(d) = p.prefix() {
                    out.dirs.push(self.strip(d).to_string());
                }
            }
        }
        out.objects.sort_by(|a, b| a.key.cmp(&b.key));
        out.dirs.sort();
        Ok(out)
    }

    async fn list_between(
        &self,
        prefix: &str,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let full_prefix =
            if self.prefix.is_empty() { prefix.to_string() } else { format!("{}/{}", self.prefix, prefix) };
        let mut req = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full_prefix);
        if let Some(a) = after {
            req = req.start_after(self.full(a)?);
        }
        let mut pages = req.into_paginator().send();
        let mut out = Vec::new();
        'pages: while let Some(page) = pages.try_next().await.map_err(|e| self.err("list", prefix, e))? {
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let key = self.strip(k);
                if before.is_some_and(|b| key >= b) {
                    break 'pages;
                }
                out.push(ObjectMeta { key: key.to_string(), size: o.size().unwrap_or(0).max(0) as u64 });
            }
        }
        Ok(out)
    }

    async fn list_some(&self, prefix: &str, max: usize) -> Result<Vec<ObjectMeta>, StoreError> {
        let full_prefix =
            if self.prefix.is_empty() { prefix.to_string() } else { format!("{}/{}", self.prefix, prefix) };
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .max_keys(i32::try_from(max.clamp(1, 1000)).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| self.err("list", prefix, e))?;
        Ok(page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta { key: self.strip(o.key()?).to_string(), size: o.size().unwrap_or(0).max(0) as u64 })
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.err("delete", key, e))?;
        Ok(())
    }

    async fn sweep_leftovers(&self) -> Result<Leftovers, StoreError> {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(ABANDONED_UPLOAD_AGE)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        Ok(Leftovers { uploads: self.abort_uploads_before(cutoff).await?, ..Leftovers::default() })
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}
