//! `GET /v1/products/{id}` and `GET /v1/products`: products of imports, each with the
//! status its images add up to and its images as photos.

use actix_web::web;
use paperclip::actix::{api_v2_operation, web::Json};
use uuid::Uuid;

use super::auth::Caller;
use super::error::ApiError;
use super::models::{ProductError, ProductPage, ProductQuery, ProductView, PRODUCT_STATES};
use super::photos::{keyset, views};
use super::AppState;
use crate::db::{self, imports::ProductFilter, imports::ProductRow, models::PhotoState};

/// Get a product
///
/// Its status (`processing`, `processed`, `process_error` with the reasons) and its images
/// as photos, in order.
#[api_v2_operation(tags(Imports))]
pub async fn get_product(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<Json<ProductView>, ApiError> {
    let id = path.into_inner();
    let mut conn = db::conn(&state.pool).await?;
    let row = db::imports::product(&mut conn, caller.owner, id)
        .await?
        .ok_or(ApiError::NotFound("product"))?;
    let mut products = with_images(
        &mut conn,
        vec![row],
        super::models::Viewer::of(&state.config, caller.scopes),
    )
    .await?;
    products
        .pop()
        .map(Json)
        .ok_or(ApiError::NotFound("product"))
}

/// List products
///
/// By id, keyset-paginated: pass `next_cursor` back as `cursor`. Filter by `import`,
/// `external_id` and `state`.
#[api_v2_operation(tags(Imports))]
pub async fn list_products(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ProductQuery>,
) -> Result<Json<ProductPage>, ApiError> {
    let q = query.into_inner();
    if let Some(s) = q.state.as_deref() {
        if !PRODUCT_STATES.contains(&s) {
            return Err(ApiError::bad_query(format!(
                "state must be one of {}; got {s:?}",
                PRODUCT_STATES.join(", ")
            )));
        }
    }
    let (after, limit) = keyset(q.cursor.as_deref(), q.limit)?;
    let mut conn = db::conn(&state.pool).await?;
    if let Some(import) = q.import {
        db::imports::get(&mut conn, caller.owner, import)
            .await?
            .ok_or(ApiError::NotFound("import"))?;
    }
    let filter = ProductFilter {
        import: q.import,
        external_id: q.external_id,
        state: q.state,
        after,
        limit,
    };
    let rows = db::imports::list_products(&mut conn, caller.owner, &filter).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|p| p.id.to_string()))
        .flatten();
    let products = with_images(
        &mut conn,
        rows,
        super::models::Viewer::of(&state.config, caller.scopes),
    )
    .await?;
    Ok(Json(ProductPage {
        products,
        next_cursor,
    }))
}

/// The products with their images as photos (with variants) and the reasons of failures.
async fn with_images(
    conn: &mut diesel_async::AsyncPgConnection,
    rows: Vec<ProductRow>,
    signing: super::models::Viewer<'_>,
) -> Result<Vec<ProductView>, ApiError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let links = db::imports::images_of(conn, &ids).await?;
    let photo_ids: Vec<Uuid> = links.iter().map(|(_, photo)| *photo).collect();
    let photos = db::photos::by_ids(conn, &photo_ids).await?;
    let mut by_id: std::collections::HashMap<Uuid, _> = views(conn, photos, signing)
        .await?
        .into_iter()
        .map(|v| (v.id, v))
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| {
            let images: Vec<_> = links
                .iter()
                .filter(|(product, _)| *product == row.id)
                .filter_map(|(_, photo)| by_id.remove(photo))
                .collect();
            let errors = images
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    matches!(
                        PhotoState::parse(&p.state),
                        Some(PhotoState::Failed | PhotoState::Dead)
                    )
                })
                .map(|(position, p)| ProductError {
                    position,
                    photo_id: p.id,
                    source_url: p.source_url.clone(),
                    state: p.state.clone(),
                    code: p.error_code.clone(),
                    message: p.error.clone(),
                })
                .collect();
            ProductView {
                id: row.id,
                external_id: row.external_id,
                name: row.name,
                state: row.state,
                errors,
                images,
                created_at: row.created_at,
                updated_at: row.updated_at,
            }
        })
        .collect())
}
