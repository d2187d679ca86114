//! The body of `POST /v1/imports`, as JSON or CSV, read into one list of products and
//! validated item by item: every problem is reported with its index and field, and one bad
//! item refuses the whole request.
//!
//! JSON: `{"products": [{"external_id": "sku-1", "name": "Mug", "images": ["https://…"]}]}`.
//! CSV: a header row, then one product per row; columns `external_id`, `name` (optional),
//! and the images either in `images` (URLs separated by spaces) or in columns named
//! `image…` (`image`, `image_1`, `image2`, …), one URL each, empty cells skipped.

use paperclip::actix::Apiv2Schema;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, Problem};
use crate::config::ImportConfig;
use crate::fetch::Rules;

/// Longest `external_id`.
pub const EXTERNAL_ID_MAX: usize = 255;
/// Longest product name.
pub const NAME_MAX: usize = 1000;

/// The JSON body.
#[derive(Debug, Clone, Deserialize, Serialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub products: Vec<ProductInput>,
}

/// One product to import.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    /// The client's id for the product (1 to 255 characters), unique per API key owner:
    /// importing it again updates the product.
    pub external_id: String,
    pub name: Option<String>,
    /// Image URLs (http or https), downloaded by the workers in this order.
    pub images: Vec<String>,
}

/// Reads a JSON body.
pub fn from_json(body: &[u8]) -> Result<Vec<ProductInput>, ApiError> {
    serde_json::from_slice::<ImportRequest>(body)
        .map(|r| r.products)
        .map_err(|e| ApiError::BadRequest {
            code: "bad_json",
            message: format!("malformed JSON body: {e}"),
        })
}

/// Reads a CSV body (see the module documentation for its columns).
pub fn from_csv(body: &[u8]) -> Result<Vec<ProductInput>, ApiError> {
    let bad = |message: String| ApiError::BadRequest {
        code: "bad_csv",
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = reader
        .headers()
        .map_err(|e| bad(format!("malformed CSV header: {e}")))?
        .clone();
    #[derive(Clone, Copy, PartialEq)]
    enum Column {
        ExternalId,
        Name,
        Images,
        Image,
    }
    let mut columns = Vec::with_capacity(headers.len());
    for h in headers.iter() {
        let h = h.to_ascii_lowercase();
        columns.push(match h.as_str() {
            "external_id" => Column::ExternalId,
            "name" => Column::Name,
            "images" => Column::Images,
            other if other.starts_with("image") => Column::Image,
            other => {
                return Err(bad(format!(
                    "unknown CSV column {other:?}: use external_id, name, images or image_N"
                )))
            }
        });
    }
    if !columns.contains(&Column::ExternalId) {
        return Err(bad("the CSV header has no external_id column".into()));
    }
    let mut products = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(format!("malformed CSV row {row}: {e}")))?;
        let mut product = ProductInput {
            external_id: String::new(),
            name: None,
            images: Vec::new(),
        };
        for (column, cell) in columns.iter().zip(record.iter()) {
            match column {
                Column::ExternalId => product.external_id = cell.to_owned(),
                Column::Name if !cell.is_empty() => product.name = Some(cell.to_owned()),
                Column::Name => {}
                Column::Images => product
                    .images
                    .extend(cell.split_whitespace().map(str::to_owned)),
                Column::Image if !cell.is_empty() => product.images.push(cell.to_owned()),
                Column::Image => {}
            }
        }
        products.push(product);
    }
    Ok(products)
}

/// Checks every product; all problems at once, or the products as accepted.
pub fn validate(
    products: &[ProductInput],
    limits: &ImportConfig,
    rules: &Rules,
) -> Result<(), ApiError> {
    if products.is_empty() {
        return Err(ApiError::BadRequest {
            code: "no_products",
            message: "the import names no products".into(),
        });
    }
    if products.len() > limits.max_products {
        return Err(ApiError::PayloadTooLarge {
            code: "too_many_products",
            message: format!(
                "{} products; at most {} per import",
                products.len(),
                limits.max_products
            ),
        });
    }
    let mut problems = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (index, p) in products.iter().enumerate() {
        let mut problem = |field: String, message: String| {
            problems.push(Problem {
                index,
                field,
                message,
            })
        };
        let id = p.external_id.as_str();
        if id.trim().is_empty() || id.chars().count() > EXTERNAL_ID_MAX {
            problem(
                "external_id".into(),
                format!("must be 1 to {EXTERNAL_ID_MAX} characters"),
            );
        } else if id.chars().any(char::is_control) {
            problem(
                "external_id".into(),
                "must not hold control characters".into(),
            );
        } else if let Some(first) = seen.insert(id, index) {
            problem(
                "external_id".into(),
                format!("{id:?} is already product {first} of this import"),
            );
        }
        if p.name
            .as_ref()
            .is_some_and(|n| n.chars().count() > NAME_MAX)
        {
            problem("name".into(), format!("longer than {NAME_MAX} characters"));
        }
        if p.images.is_empty() {
            problem("images".into(), "at least one image URL is needed".into());
        }
        if p.images.len() > limits.max_images_per_product {
            problem(
                "images".into(),
                format!(
                    "{} images; at most {} per product",
                    p.images.len(),
                    limits.max_images_per_product
                ),
            );
        }
        for (i, url) in p.images.iter().enumerate() {
            let field = format!("images[{i}]");
            if url.len() > limits.max_url_chars {
                problem(
                    field,
                    format!("longer than {} characters", limits.max_url_chars),
                );
            } else if let Err(e) = rules.check_url(url) {
                problem(field, format!("{e} ({})", e.code()));
            } else if p.images[..i].contains(url) {
                problem(
                    field,
                    "the same URL is already an image of this product".into(),
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ImportConfig {
        let config = crate::config::Config::load(None).expect("defaults");
        config.import
    }

    #[test]
    fn csv_and_json_read_the_same_products() {
        let json = br#"{"products": [
            {"external_id": "sku-1", "name": "Mug, blue", "images": ["https://a.example/1.jpg", "https://a.example/2.jpg"]},
            {"external_id": "sku-2", "name": null, "images": ["https://b.example/x.png"]}
        ]}"#;
        let csv = "external_id,name,images\n\
                   sku-1,\"Mug, blue\",https://a.example/1.jpg https://a.example/2.jpg\n\
                   sku-2,,https://b.example/x.png\n";
        let columns = "external_id,name,image_1,image_2\n\
                       sku-1,\"Mug, blue\",https://a.example/1.jpg,https://a.example/2.jpg\n\
                       sku-2,,https://b.example/x.png,\n";
        let from_json = from_json(json).expect("json");
        assert_eq!(from_csv(csv.as_bytes()).expect("csv"), from_json);
        assert_eq!(
            from_csv(columns.as_bytes()).expect("csv columns"),
            from_json
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_index_and_field() {
        let products = vec![
            ProductInput {
                external_id: "ok".into(),
                name: None,
                images: vec!["https://a.example/1.jpg".into()],
            },
            ProductInput {
                external_id: "".into(),
                name: None,
                images: vec![],
            },
            ProductInput {
                external_id: "ok".into(),
                name: None,
                images: vec![
                    "ftp://a.example/1.jpg".into(),
                    "http://127.0.0.1/".into(),
                    "https://a.example/1.jpg".into(),
                    "https://a.example/1.jpg".into(),
                ],
            },
        ];
        let Err(ApiError::Invalid(problems)) = validate(&products, &limits(), &Rules::default())
        else {
            panic!("expected problems");
        };
        let found: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.index, p.field.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (1, "external_id"),
                (1, "images"),
                (2, "external_id"),
                (2, "images[0]"),
                (2, "images[1]"),
                (2, "images[3]"),
            ]
        );
    }

    #[test]
    fn unknown_csv_columns_and_json_fields_are_refused() {
        assert!(from_csv(b"external_id,price\nx,1\n").is_err());
        assert!(from_csv(b"name\nx\n").is_err());
        assert!(from_json(br#"{"products": [], "extra": 1}"#).is_err());
        assert!(
            from_json(br#"{"products": [{"external_id": "a", "images": [], "x": 1}]}"#).is_err()
        );
    }
}
