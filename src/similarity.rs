//! Similarity measures the stop rules and node library need: cosine of two
//! vectors, sentence BLEU-4 with smoothing (DRAFT's convergence δ), and a
//! deterministic lexical embedding (TF-IDF over word n-grams, hashed into a
//! fixed number of dimensions) for workflows without an embedding model.

use std::collections::HashMap;

/// Cosine similarity; 0 when either vector is all zeros or the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
}

/// Lower-cased whitespace tokens (how DRAFT tokenises for BLEU).
pub fn tokens(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_lowercase).collect()
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], u32> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// Sentence BLEU-4 of `hypothesis` against one `reference`, uniform weights,
/// with Chen & Cherry's smoothing method 4 (as NLTK's `method4`, k = 5): an
/// order with no matches gets the count `1 / (2^i · k / ln(len))`, where `i`
/// counts the orders smoothed so far. Tokens are lower-cased whitespace words.
/// 0 when no unigram matches; in [0, 1].
pub fn bleu4(reference: &str, hypothesis: &str) -> f64 {
    let reference = tokens(reference);
    let hypothesis = tokens(hypothesis);
    let hyp_len = hypothesis.len();
    if hyp_len == 0 {
        return 0.0;
    }
    const K: f64 = 5.0;
    let mut log_sum = 0.0;
    let mut smoothed = 1;
    for n in 1..=4 {
        let hyp = ngram_counts(&hypothesis, n);
        let refs = ngram_counts(&reference, n);
        let matched: u32 = hyp
            .iter()
            .map(|(gram, count)| (*count).min(refs.get(gram).copied().unwrap_or(0)))
            .sum();
        let total = hyp_len.saturating_sub(n - 1).max(1) as f64;
        if n == 1 && matched == 0 {
            return 0.0;
        }
        let p = if matched == 0 {
            if hyp_len > 1 {
                let count = 1.0 / (2f64.powi(smoothed) * K / (hyp_len as f64).ln());
                smoothed += 1;
                count / total
            } else {
                // Unsmoothable (a one-word hypothesis): NLTK's floor.
                f64::MIN_POSITIVE
            }
        } else {
            matched as f64 / total
        };
        log_sum += 0.25 * p.ln();
    }
    let (c, r) = (hyp_len as f64, reference.len() as f64);
    let brevity = if c > r { 1.0 } else { (1.0 - r / c).exp() };
    (brevity * log_sum.exp()).clamp(0.0, 1.0)
}

/// Deterministic lexical embeddings: TF-IDF over word unigrams and bigrams of
/// the given texts (IDF from these texts), hashed into `dims` dimensions and
/// L2-normalised. The same texts always give the same vectors.
pub fn tfidf(texts: &[String], dims: usize) -> Vec<Vec<f32>> {
    let dims = dims.max(1);
    let docs: Vec<HashMap<String, f64>> = texts
        .iter()
        .map(|t| {
            let words: Vec<String> = t
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect();
            let mut tf: HashMap<String, f64> = HashMap::new();
            for w in &words {
                *tf.entry(w.clone()).or_default() += 1.0;
            }
            for pair in words.windows(2) {
                *tf.entry(format!("{} {}", pair[0], pair[1])).or_default() += 1.0;
            }
            tf
        })
        .collect();
    let mut df: HashMap<&str, f64> = HashMap::new();
    for doc in &docs {
        for term in doc.keys() {
            *df.entry(term.as_str()).or_default() += 1.0;
        }
    }
    let n = docs.len() as f64;
    docs.iter()
        .map(|doc| {
            let mut v = vec![0.0f64; dims];
            for (term, tf) in doc {
                // Smoothed IDF (as scikit-learn's default): never zero.
                let idf = ((1.0 + n) / (1.0 + df[term.as_str()])).ln() + 1.0;
                let h = crate::hash::fnv1a(term.as_bytes());
                let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
                v[(h % dims as u64) as usize] += sign * tf * idf;
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter()
                .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
                .collect()
        })
        .collect()
}

/// The dimensions of an `embed` node's TF-IDF vectors when it gives none.
pub const TFIDF_DIMS: usize = 512;

/// The cosine of two texts' TF-IDF vectors fitted on the two alone (as an
/// `embed` node without a model gives them for a list of two).
pub fn tfidf_cosine(a: &str, b: &str) -> f64 {
    let v = tfidf(&[a.to_string(), b.to_string()], TFIDF_DIMS);
    cosine(&v[0], &v[1])
}

/// DRAFT's δ between successive versions of a text: the mean of BLEU-4
/// (the previous version as reference) and their TF-IDF cosine, as
/// `workflows/draft.yaml` computes it to stop.
pub fn version_delta(previous: &str, new: &str) -> f64 {
    (bleu4(previous, new) + tfidf_cosine(previous, new)) / 2.0
}

/// A threshold on a similarity score, and how well it separates pairs
/// labelled alike (score at or above it) from the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cut {
    pub threshold: f64,
    /// The mean of the share of alike pairs at or above the threshold and
    /// the share of the others below it.
    pub balanced_accuracy: f64,
}

impl Cut {
    /// The balanced accuracy of `threshold` on labelled scores.
    pub fn of(threshold: f64, scored: &[(f64, bool)]) -> Cut {
        let rate = |label: bool| {
            let class: Vec<f64> = scored
                .iter()
                .filter(|s| s.1 == label)
                .map(|s| s.0)
                .collect();
            let right = class.iter().filter(|&&s| (s >= threshold) == label).count();
            if class.is_empty() {
                1.0
            } else {
                right as f64 / class.len() as f64
            }
        };
        Cut {
            threshold,
            balanced_accuracy: (rate(true) + rate(false)) / 2.0,
        }
    }
}

/// Calibrates a threshold on labelled scores (`true`: the pair should count
/// as alike): of the midpoints between neighbouring distinct scores, the one
/// with the highest balanced accuracy; among equals, the middle one. `None`
/// without scores.
pub fn calibrate_threshold(scored: &[(f64, bool)]) -> Option<Cut> {
    let mut values: Vec<f64> = scored
        .iter()
        .map(|s| s.0)
        .filter(|s| s.is_finite())
        .collect();
    values.sort_by(f64::total_cmp);
    values.dedup();
    let candidates: Vec<f64> = match values.as_slice() {
        [] => return None,
        [only] => vec![*only],
        v => v.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect(),
    };
    let cuts: Vec<Cut> = candidates.iter().map(|&t| Cut::of(t, scored)).collect();
    let best = cuts
        .iter()
        .map(|c| c.balanced_accuracy)
        .fold(f64::MIN, f64::max);
    let tied: Vec<&Cut> = cuts
        .iter()
        .filter(|c| c.balanced_accuracy == best)
        .collect();
    Some(*tied[tied.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_picks_the_separating_midpoint() {
        let scored = [
            (0.2, false),
            (0.3, false),
            (0.5, true),
            (0.6, false),
            (0.8, true),
            (0.9, true),
        ];
        let cut = calibrate_threshold(&scored).unwrap();
        // 0.4 lets one "not alike" through (0.6), 0.7 misses one alike (0.5):
        // both (1 + 2/3) / 2; the middle of the two tied is the later.
        assert!((cut.threshold - 0.7).abs() < 1e-12, "{cut:?}");
        assert!((cut.balanced_accuracy - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(Cut::of(0.0, &scored).balanced_accuracy, 0.5);
        assert!(calibrate_threshold(&[]).is_none());
        assert_eq!(calibrate_threshold(&[(0.4, true)]).unwrap().threshold, 0.4);
        // A perfect split keeps the middle of the tied midpoints.
        let split = [(0.1, false), (0.2, false), (0.7, true), (0.8, true)];
        assert!((calibrate_threshold(&split).unwrap().threshold - 0.45).abs() < 1e-12);
        assert!(tfidf_cosine("set an alarm at six", "set an alarm at six") > 0.999);
    }

    #[test]
    fn cosine_on_hand_worked_vectors() {
        assert!((cosine(&[1.0, 0.0], &[0.0, 1.0])).abs() < 1e-12);
        assert!((cosine(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-12);
        // (1,1)·(1,0) = 1; |(1,1)| = √2 → 1/√2.
        assert!((cosine(&[1.0, 1.0], &[1.0, 0.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
    }

    /// Expected values worked by hand and checked against NLTK 3.9
    /// (`sentence_bleu([ref.lower().split()], hyp.lower().split(),
    /// smoothing_function=SmoothingFunction().method4)`).
    #[test]
    fn bleu4_on_hand_worked_examples() {
        let cases = [
            // Identical: every precision 1, no brevity penalty.
            ("the cat sat on the mat", "the cat sat on the mat", 1.0),
            // Nothing in common.
            ("the cat sat on the mat", "dogs bark loudly", 0.0),
            // p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3 → smoothed ln 6/(2·5)/3
            // = 0.0597; BP = 1; (5/6 · 3/5 · 1/4 · 0.0597)^(1/4) = 0.2939.
            (
                "the cat sat on the mat",
                "the cat is on the mat",
                0.293945703509473,
            ),
            // Shorter hypothesis: BP = exp(1 - 6/4) = 0.6065; p = 1, 1, 1, 1
            // for "the cat sat on" → 0.6065.
            (
                "the cat sat on the mat",
                "The cat sat on",
                0.6065306597126334,
            ),
            // p1 = 1/4; p2 = 0/3, p3 = 0/2, p4 = 0/1 smoothed to ln 4/(2·5)/3,
            // ln 4/(4·5)/2, ln 4/(8·5)/1 → (1.3876e-5)^(1/4) = 0.0610.
            ("a b c d", "a x y z", 0.061033220311973134),
        ];
        for (reference, hypothesis, expected) in cases {
            let got = bleu4(reference, hypothesis);
            assert!(
                (got - expected).abs() < 1e-9,
                "{reference:?} vs {hypothesis:?}: {got} != {expected}"
            );
        }
    }

    #[test]
    fn tfidf_is_deterministic_normalised_and_lexical() {
        let texts: Vec<String> = [
            "def add(a, b): return a + b  # add two numbers",
            "def add(x, y): return x + y  # add two numbers",
            "print the weather forecast for tomorrow",
        ]
        .map(String::from)
        .to_vec();
        let a = tfidf(&texts, 256);
        assert_eq!(a, tfidf(&texts, 256));
        for v in &a {
            let norm: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        assert!(cosine(&a[0], &a[1]) > cosine(&a[0], &a[2]) + 0.2);
    }
}
