//! Product imports: recording an import (its batch, products, images and photos) in one
//! transaction, and reading products back with the status their images add up to.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::{Batch, NewPhoto, PhotoState};
use super::schema::{batches, import_products, imports, photos, product_images};
use super::DbError;

/// A product as the client named it (already validated).
#[derive(Debug, Clone)]
pub struct ProductSpec {
    pub external_id: String,
    pub name: Option<String>,
    pub images: Vec<String>,
}

/// What an import recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub products: Vec<RecordedProduct>,
    /// Photos created by this import, to be published, each with its traceparent.
    pub new_photos: Vec<(Uuid, Option<String>)>,
}

#[derive(Debug, Clone)]
pub struct RecordedProduct {
    pub id: Uuid,
    pub external_id: String,
    /// False when an earlier import made it and this one updated it.
    pub created: bool,
    /// (URL, photo id, photo state) in order.
    pub images: Vec<(String, Uuid, String)>,
}

#[derive(QueryableByName)]
struct Upserted {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    external_id: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    created: bool,
}

/// Records an import in one transaction: the batch and import rows, every product (an
/// `external_id` the owner imported before is updated, not duplicated), and its images.
/// An image whose URL the product already had keeps its photo unless that photo failed or
/// is dead; every other image gets a new photo, queued for download. With `idempotency`,
/// the answer `respond` makes is recorded in the same transaction.
pub async fn record(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    import_id: Uuid,
    products: &[ProductSpec],
    idempotency: Option<&str>,
    quotas: crate::config::QuotasConfig,
    respond: impl Fn(&Recorded) -> serde_json::Value + Send + Sync,
) -> Result<(Recorded, serde_json::Value), DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        let external: Vec<&str> = products.iter().map(|p| p.external_id.as_str()).collect();
        // The photo trigger locks products in id order (to recompute their status): the
        // products this import updates are locked the same way before the upsert, so that
        // the two never wait for each other in a cycle.
        diesel::sql_query(
            "SELECT 1 FROM products WHERE owner_id = $1 AND external_id = ANY ($2) \
             ORDER BY id FOR UPDATE",
        )
        .bind::<SqlUuid, _>(owner)
        .bind::<Array<Text>, _>(&external)
        .execute(conn)
        .await?;
        let now = Utc::now();
        diesel::insert_into(batches::table)
            .values(&Batch {
                id: import_id,
                owner_id: owner,
                created_at: now,
            })
            .execute(conn)
            .await?;
        diesel::insert_into(imports::table)
            .values((
                imports::id.eq(import_id),
                imports::owner_id.eq(owner),
                imports::created_at.eq(now),
            ))
            .execute(conn)
            .await?;

        let fresh: Vec<Uuid> = products.iter().map(|_| Uuid::now_v7()).collect();
        let names: Vec<Option<&str>> = products.iter().map(|p| p.name.as_deref()).collect();
        // `xmax = 0` tells a row this statement inserted from one it updated.
        let upserted: Vec<Upserted> = diesel::sql_query(
            "INSERT INTO products (id, owner_id, external_id, name, created_at, updated_at) \
             SELECT v.id, $2, v.external_id, v.name, $5, $5 \
             FROM unnest($1::uuid[], $3::text[], $4::text[]) AS v(id, external_id, name) \
             ON CONFLICT ON CONSTRAINT products_external_id_key \
             DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at \
             RETURNING id, external_id, (xmax = 0) AS created",
        )
        .bind::<Array<SqlUuid>, _>(&fresh)
        .bind::<SqlUuid, _>(owner)
        .bind::<Array<Text>, _>(&external)
        .bind::<Array<Nullable<Text>>, _>(&names)
        .bind::<Timestamptz, _>(now)
        .load(conn)
        .await?;
        let by_external: HashMap<&str, &Upserted> = upserted
            .iter()
            .map(|u| (u.external_id.as_str(), u))
            .collect();
        let product_ids: Vec<Uuid> = upserted.iter().map(|u| u.id).collect();

        // The images the updated products had. The upsert above locked those products'
        // rows, so a concurrent import of the same product waits for this one.
        let earlier: Vec<(Uuid, String, Uuid, String)> = product_images::table
            .inner_join(photos::table)
            .filter(product_images::product_id.eq_any(&product_ids))
            .select((
                product_images::product_id,
                product_images::url,
                photos::id,
                photos::state,
            ))
            .load(conn)
            .await?;
        let mut kept: HashMap<(Uuid, &str), (Uuid, &str)> = HashMap::new();
        for (product, url, photo, state) in &earlier {
            let reusable = !matches!(
                PhotoState::parse(state),
                Some(PhotoState::Failed | PhotoState::Dead)
            );
            if reusable {
                kept.insert((*product, url.as_str()), (*photo, state.as_str()));
            }
        }

        let mut recorded = Recorded {
            products: Vec::with_capacity(products.len()),
            new_photos: Vec::new(),
        };
        let mut new_photos = Vec::new();
        let (mut img_product, mut img_position, mut img_url, mut img_photo) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for spec in products {
            let row = by_external
                .get(spec.external_id.as_str())
                .ok_or_else(|| DbError::Invariant("an imported product was not recorded".into()))?;
            let mut images = Vec::with_capacity(spec.images.len());
            for (position, url) in spec.images.iter().enumerate() {
                let (photo, state) = match kept.get(&(row.id, url.as_str())) {
                    Some((photo, state)) => (*photo, (*state).to_owned()),
                    None => {
                        let id = Uuid::now_v7();
                        let trace_parent = crate::telemetry::accepted(id, import_id);
                        recorded.new_photos.push((id, Some(trace_parent.clone())));
                        new_photos.push(NewPhoto {
                            id,
                            batch_id: import_id,
                            owner_id: owner,
                            filename: file_name(url),
                            content_type: None,
                            bytes: None,
                            sha256: None,
                            original_key: crate::storage::original_key(id),
                            source_url: Some(url.clone()),
                            trace_parent: Some(trace_parent),
                        });
                        (id, PhotoState::Queued.as_str().to_owned())
                    }
                };
                img_product.push(row.id);
                img_position.push(position as i32);
                img_url.push(url.as_str());
                img_photo.push(photo);
                images.push((url.clone(), photo, state));
            }
            recorded.products.push(RecordedProduct {
                id: row.id,
                external_id: spec.external_id.clone(),
                created: row.created,
                images,
            });
        }
        super::usage::admit(
            conn,
            owner,
            new_photos.len() as i64,
            0,
            quotas,
            chrono::Utc::now(),
        )
        .await?;
        for chunk in new_photos.chunks(PHOTO_INSERT_CHUNK) {
            diesel::insert_into(photos::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
        // Linked before the images, so that the products' events name this import.
        let links: Vec<_> = product_ids
            .iter()
            .map(|p| {
                (
                    import_products::import_id.eq(import_id),
                    import_products::product_id.eq(*p),
                )
            })
            .collect();
        diesel::insert_into(import_products::table)
            .values(links)
            .execute(conn)
            .await?;
        diesel::delete(
            product_images::table.filter(product_images::product_id.eq_any(&product_ids)),
        )
        .execute(conn)
        .await?;
        diesel::sql_query(
            "INSERT INTO product_images (product_id, position, url, photo_id) \
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::uuid[])",
        )
        .bind::<Array<SqlUuid>, _>(&img_product)
        .bind::<Array<Integer>, _>(&img_position)
        .bind::<Array<Text>, _>(&img_url)
        .bind::<Array<SqlUuid>, _>(&img_photo)
        .execute(conn)
        .await?;
        let response = respond(&recorded);
        if let Some(key) = idempotency {
            super::idempotency::insert(conn, owner, key, import_id, &response).await?;
        }
        Ok((recorded, response))
    })
    .await
}

/// Rows per INSERT of photos (PostgreSQL takes at most 65535 parameters a statement).
const PHOTO_INSERT_CHUNK: usize = 5000;

/// The last path segment of a URL, as the photo's file name.
fn file_name(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let last = parsed.path_segments()?.next_back()?;
    (!last.is_empty()).then(|| last.chars().take(255).collect())
}

/// An import, if `owner` owns it.
pub async fn get(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    id: Uuid,
) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(imports::table
        .inner_join(batches::table)
        .filter(imports::id.eq(id))
        .filter(imports::owner_id.eq(owner))
        .filter(batches::deleted_at.is_null())
        .select(imports::created_at)
        .first(conn)
        .await
        .optional()?)
}

/// Products with their status (`pr`); `rest` adds the WHERE clause and what follows it.
/// The status is kept by the event triggers as the images add up: `processing` while any
/// image is queued or processing, then `process_error` if any failed or is dead, else
/// `processed`.
fn products_query(rest: &str) -> String {
    format!(
        "SELECT pr.id, pr.external_id, pr.name, pr.created_at, pr.updated_at, \
                coalesce(pr.state, 'processing') AS state \
         FROM products AS pr \
         {rest}"
    )
}

/// A product with its status.
#[derive(Debug, Clone, QueryableByName)]
pub struct ProductRow {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub external_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub name: Option<String>,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

/// What `GET /v1/products` filters on; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    pub import: Option<Uuid>,
    pub external_id: Option<String>,
    /// processing | processed | process_error
    pub state: Option<String>,
    /// Keyset cursor: products with a greater id.
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// `owner`'s products matching `filter`, by id.
pub async fn list_products(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    filter: &ProductFilter,
) -> Result<Vec<ProductRow>, DbError> {
    let sql = products_query(
        "WHERE pr.owner_id = $1 \
           AND ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM import_products AS ip \
                WHERE ip.product_id = pr.id AND ip.import_id = $2)) \
           AND ($3::text IS NULL OR pr.external_id = $3) \
           AND ($4::uuid IS NULL OR pr.id > $4) \
           AND ($5::text IS NULL OR pr.state = $5) \
         ORDER BY pr.id \
         LIMIT $6",
    );
    Ok(diesel::sql_query(sql)
        .bind::<SqlUuid, _>(owner)
        .bind::<Nullable<SqlUuid>, _>(filter.import)
        .bind::<Nullable<Text>, _>(filter.external_id.as_deref())
        .bind::<Nullable<SqlUuid>, _>(filter.after)
        .bind::<Nullable<Text>, _>(filter.state.as_deref())
        .bind::<diesel::sql_types::BigInt, _>(filter.limit)
        .load(conn)
        .await?)
}

/// One product of `owner`.
pub async fn product(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    id: Uuid,
) -> Result<Option<ProductRow>, DbError> {
    let sql = products_query("WHERE pr.owner_id = $1 AND pr.id = $2");
    Ok(diesel::sql_query(sql)
        .bind::<SqlUuid, _>(owner)
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .optional()?)
}

/// The photo ids of each product's images, in order.
pub async fn images_of(
    conn: &mut AsyncPgConnection,
    products: &[Uuid],
) -> Result<Vec<(Uuid, Uuid)>, DbError> {
    Ok(product_images::table
        .filter(product_images::product_id.eq_any(products))
        .order((product_images::product_id, product_images::position))
        .select((product_images::product_id, product_images::photo_id))
        .load(conn)
        .await?)
}

#[derive(QueryableByName)]
struct StateCount {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// (product state, products) and (photo state, images) of an import.
pub async fn counts(
    conn: &mut AsyncPgConnection,
    import: Uuid,
) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>), DbError> {
    let products: Vec<StateCount> = diesel::sql_query(
        "SELECT coalesce(pr.state, 'processing') AS state, count(*) AS n \
         FROM import_products AS ip \
         JOIN products AS pr ON pr.id = ip.product_id \
         WHERE ip.import_id = $1 \
         GROUP BY 1",
    )
    .bind::<SqlUuid, _>(import)
    .load(conn)
    .await?;
    let images: Vec<StateCount> = diesel::sql_query(
        "SELECT ph.state, count(*) AS n \
         FROM import_products AS ip \
         JOIN product_images AS pi ON pi.product_id = ip.product_id \
         JOIN photos AS ph ON ph.id = pi.photo_id \
         WHERE ip.import_id = $1 \
         GROUP BY ph.state",
    )
    .bind::<SqlUuid, _>(import)
    .load(conn)
    .await?;
    let pairs = |v: Vec<StateCount>| v.into_iter().map(|c| (c.state, c.n)).collect();
    Ok((pairs(products), pairs(images)))
}
