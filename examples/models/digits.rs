//! The digit classifier of the `digits` example, shared with the integration tests:
//! k-nearest neighbours trained at start-up on the 8x8 digits dataset that `smartcore` ships,
//! served as a file-input model that takes a PNG image.
//!
//! Images are 8x8 grayscale, white ink on black: pixel value `p` in 0..=255 is the dataset's
//! intensity `p * 16 / 255` in 0..=16.

use std::io::Cursor;
use std::sync::Arc;

use serving::prelude::*;
use serving::{Bytes, ModelEndpointBuilder};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::metrics::distance::euclidian::Euclidian;
use smartcore::neighbors::knn_classifier::{KNNClassifier, KNNClassifierParameters};

/// Pixels per side of an image.
pub const SIDE: u32 = 8;
const PIXELS: usize = (SIDE * SIDE) as usize;

type Knn = KNNClassifier<f64, u32, DenseMatrix<f64>, Vec<u32>, Euclidian<f64>>;

/// A trained digit model.
pub struct Digits {
    knn: Arc<Knn>,
    images: Vec<[f64; PIXELS]>,
    labels: Vec<u32>,
    /// Share of the held-out samples (every fifth) the model classifies correctly.
    pub holdout_accuracy: f64,
}

impl Digits {
    /// Trains on four fifths of the dataset's 1,797 images and measures the accuracy on the
    /// rest.
    pub fn train() -> Result<Self, smartcore::error::Failed> {
        let dataset = smartcore::dataset::digits::load_dataset();
        let images: Vec<[f64; PIXELS]> = dataset
            .data
            .chunks_exact(dataset.num_features)
            .map(|row| std::array::from_fn(|i| f64::from(row[i])))
            .collect();
        let labels: Vec<u32> = dataset.target.iter().map(|&d| d as u32).collect();
        let held_out = |i: usize| i % 5 == 4;
        let split = |keep: bool| {
            let rows: Vec<Vec<f64>> = (0..images.len())
                .filter(|&i| held_out(i) != keep)
                .map(|i| images[i].to_vec())
                .collect();
            let targets: Vec<u32> = (0..images.len())
                .filter(|&i| held_out(i) != keep)
                .map(|i| labels[i])
                .collect();
            (rows, targets)
        };
        let (train_rows, train_labels) = split(true);
        let (test_rows, test_labels) = split(false);
        let knn = Knn::fit(
            &DenseMatrix::from_2d_vec(&train_rows)?,
            &train_labels,
            KNNClassifierParameters::default().with_k(3),
        )?;
        let predicted = knn.predict(&DenseMatrix::from_2d_vec(&test_rows)?)?;
        let correct = predicted
            .iter()
            .zip(&test_labels)
            .filter(|(p, t)| p == t)
            .count();
        Ok(Digits {
            knn: Arc::new(knn),
            images,
            labels,
            holdout_accuracy: correct as f64 / test_labels.len() as f64,
        })
    }

    /// An endpoint named `name` whose input is one Base64 PNG; the prediction is the digit,
    /// and the model's confidence is logged as the custom metric `confidence`.
    pub fn endpoint(&self, name: &str) -> ModelEndpointBuilder {
        let knn = Arc::clone(&self.knn);
        let classify = predictor_fn(move |png: Bytes| -> Result<u32> {
            let pixels = decode_png(&png)?;
            let x =
                DenseMatrix::from_2d_vec(&vec![pixels.to_vec()]).map_err(Error::from_predictor)?;
            let digit = knn.predict(&x).map_err(Error::from_predictor)?[0];
            let probabilities = knn.predict_proba(&x).map_err(Error::from_predictor)?;
            let confidence = probabilities[0].iter().copied().fold(0.0, f64::max);
            log_metric("confidence", confidence);
            Ok(digit)
        });
        ModelEndpoint::builder(name, classify)
            .model("digits-knn", "1")
            .files(FileInput::Bytes)
    }

    /// Dataset image `index` as a PNG, with its true label.
    pub fn sample_png(&self, index: usize) -> (Vec<u8>, u32) {
        let pixels: Vec<u8> = self.images[index]
            .iter()
            .map(|v| (v * 255.0 / 16.0).round() as u8)
            .collect();
        (encode_png(&pixels, SIDE, SIDE), self.labels[index])
    }
}

/// An 8-bit grayscale PNG of `width` x `height` pixels.
pub fn encode_png(pixels: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .expect("writing to a Vec cannot fail");
    writer
        .write_image_data(pixels)
        .expect("the pixel count matches the size");
    writer.finish().expect("writing to a Vec cannot fail");
    out
}

/// The 64 intensities (0..=16) of an 8x8 PNG; anything else is rejected with the reason.
pub fn decode_png(bytes: &[u8]) -> Result<[f64; PIXELS]> {
    let not_png = |e: png::DecodingError| Error::rejected(format!("not a PNG image: {e}"));
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(not_png)?;
    let (width, height) = (reader.info().width, reader.info().height);
    if (width, height) != (SIDE, SIDE) {
        return Err(Error::rejected(format!(
            "the image must be {SIDE}x{SIDE} pixels, got {width}x{height}"
        )));
    }
    let mut buffer = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let frame = reader.next_frame(&mut buffer).map_err(not_png)?;
    let channels = frame.color_type.samples();
    let data = &buffer[..frame.buffer_size()];
    let mut pixels = [0.0; PIXELS];
    for (y, line) in data.chunks_exact(frame.line_size).enumerate() {
        for x in 0..SIDE as usize {
            let sample = &line[x * channels..(x + 1) * channels];
            // Colour images count by their mean of red, green and blue; alpha is ignored.
            let value = match frame.color_type {
                png::ColorType::Rgb | png::ColorType::Rgba => {
                    (u32::from(sample[0]) + u32::from(sample[1]) + u32::from(sample[2])) as f64
                        / 3.0
                }
                _ => f64::from(sample[0]),
            };
            pixels[y * SIDE as usize + x] = value * 16.0 / 255.0;
        }
    }
    Ok(pixels)
}
