//! Seeded k-means (k-means++ start, Lloyd iterations, Euclidean distance)
//! and the member nearest each centroid: CodeChain's cluster-and-select.
//! The same points, k and seed always give the same result.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clustering {
    /// Cluster of each point.
    pub assignments: Vec<usize>,
    /// For each cluster, the index of the point nearest its centroid.
    pub representatives: Vec<usize>,
    /// Points per cluster.
    pub sizes: Vec<usize>,
    /// Sum of squared distances of points to their centroid.
    pub inertia: f64,
    pub iterations: u32,
}

/// Clusters `points` into `min(k, points.len())` groups. Clusters are
/// numbered by their first member, so results compare across runs.
pub fn kmeans(points: &[Vec<f32>], k: usize, seed: u64) -> Result<Clustering, String> {
    if points.is_empty() {
        return Err("nothing to cluster".into());
    }
    if k == 0 {
        return Err("k must be at least 1".into());
    }
    let dims = points[0].len();
    if let Some(i) = points.iter().position(|p| p.len() != dims) {
        return Err(format!(
            "point {i} has {} dimensions, point 0 has {dims}",
            points[i].len()
        ));
    }
    let k = k.min(points.len());
    let mut rng = SplitMix(seed);
    let mut centroids = plus_plus(points, k, &mut rng);
    let mut assignments = vec![0; points.len()];
    let mut iterations = 0;
    for iter in 0..100 {
        iterations = iter + 1;
        let mut changed = false;
        for (i, p) in points.iter().enumerate() {
            let best = nearest(p, &centroids);
            if best != assignments[i] || iter == 0 {
                changed |= best != assignments[i];
                assignments[i] = best;
            }
        }
        // New centroids; an empty cluster takes the point farthest from its own.
        let mut sums = vec![vec![0.0f64; dims]; k];
        let mut counts = vec![0usize; k];
        for (p, &a) in points.iter().zip(&assignments) {
            counts[a] += 1;
            for (s, x) in sums[a].iter_mut().zip(p) {
                *s += *x as f64;
            }
        }
        for c in 0..k {
            if counts[c] == 0 {
                let far = (0..points.len())
                    .max_by(|&a, &b| {
                        dist2(&points[a], &centroids[assignments[a]])
                            .total_cmp(&dist2(&points[b], &centroids[assignments[b]]))
                    })
                    .unwrap_or(0);
                centroids[c] = points[far].iter().map(|x| *x as f64).collect();
                assignments[far] = c;
                changed = true;
            } else {
                centroids[c] = sums[c].iter().map(|s| s / counts[c] as f64).collect();
            }
        }
        if !changed && iter > 0 {
            break;
        }
    }
    // Renumber clusters by first member.
    let mut order: Vec<Option<usize>> = vec![None; k];
    let mut next = 0;
    for &a in &assignments {
        if order[a].is_none() {
            order[a] = Some(next);
            next += 1;
        }
    }
    let renumber: Vec<usize> = order.iter().map(|o| o.unwrap_or(usize::MAX)).collect();
    let k_used = next;
    let mut new_centroids = vec![Vec::new(); k_used];
    for (old, &new) in renumber.iter().enumerate() {
        if new != usize::MAX {
            new_centroids[new] = centroids[old].clone();
        }
    }
    let assignments: Vec<usize> = assignments.iter().map(|&a| renumber[a]).collect();
    let mut sizes = vec![0; k_used];
    let mut representatives = vec![usize::MAX; k_used];
    let mut best = vec![f64::INFINITY; k_used];
    let mut inertia = 0.0;
    for (i, (p, &a)) in points.iter().zip(&assignments).enumerate() {
        sizes[a] += 1;
        let d = dist2(p, &new_centroids[a]);
        inertia += d;
        if d < best[a] {
            best[a] = d;
            representatives[a] = i;
        }
    }
    Ok(Clustering {
        assignments,
        representatives,
        sizes,
        inertia,
        iterations,
    })
}

fn dist2(p: &[f32], c: &[f64]) -> f64 {
    p.iter()
        .zip(c)
        .map(|(x, y)| {
            let d = *x as f64 - y;
            d * d
        })
        .sum()
}

fn nearest(p: &[f32], centroids: &[Vec<f64>]) -> usize {
    let mut best = (0, f64::INFINITY);
    for (i, c) in centroids.iter().enumerate() {
        let d = dist2(p, c);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// k-means++: each next centre is drawn with probability proportional to its
/// squared distance from the nearest centre chosen so far.
fn plus_plus(points: &[Vec<f32>], k: usize, rng: &mut SplitMix) -> Vec<Vec<f64>> {
    let to_f64 = |p: &Vec<f32>| p.iter().map(|x| *x as f64).collect::<Vec<f64>>();
    let mut centroids = vec![to_f64(&points[rng.below(points.len())])];
    while centroids.len() < k {
        let d: Vec<f64> = points
            .iter()
            .map(|p| dist2(p, &centroids[nearest(p, &centroids)]))
            .collect();
        let total: f64 = d.iter().sum();
        let pick = if total <= 0.0 {
            // All remaining points coincide with centres: take the next unused.
            centroids.len() % points.len()
        } else {
            let mut target = rng.unit() * total;
            let mut chosen = points.len() - 1;
            for (i, di) in d.iter().enumerate() {
                if target < *di {
                    chosen = i;
                    break;
                }
                target -= di;
            }
            chosen
        };
        centroids.push(to_f64(&points[pick]));
    }
    centroids
}

/// A small, fast, well-mixed PRNG (SplitMix64); reproducible everywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> Vec<Vec<f32>> {
        // Three well-separated groups of three.
        vec![
            vec![0.0, 0.0],
            vec![10.0, 10.0],
            vec![0.1, 0.2],
            vec![-10.0, 5.0],
            vec![10.2, 9.9],
            vec![0.2, -0.1],
            vec![-9.8, 5.1],
            vec![9.9, 10.1],
            vec![-10.1, 4.9],
        ]
    }

    #[test]
    fn finds_separated_groups_and_their_central_members() {
        let c = kmeans(&blobs(), 3, 0).unwrap();
        assert_eq!(c.assignments, [0, 1, 0, 2, 1, 0, 2, 1, 2]);
        assert_eq!(c.sizes, [3, 3, 3]);
        // Each representative is the member nearest its group's mean.
        assert_eq!(c.representatives, [0, 1, 3]);
        assert!(c.inertia < 1.0);
    }

    #[test]
    fn is_reproducible_with_a_seed() {
        let points: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![((i * 37) % 17) as f32, ((i * 11) % 7) as f32])
            .collect();
        for seed in [0, 1, 42] {
            assert_eq!(kmeans(&points, 4, seed), kmeans(&points, 4, seed));
        }
    }

    #[test]
    fn edge_cases() {
        assert!(kmeans(&[], 2, 0).is_err());
        assert!(kmeans(&blobs(), 0, 0).is_err());
        assert!(kmeans(&[vec![1.0], vec![1.0, 2.0]], 1, 0).is_err());
        // k above the number of points, and identical points.
        let c = kmeans(&[vec![1.0, 1.0], vec![1.0, 1.0]], 5, 0).unwrap();
        assert_eq!(c.assignments.len(), 2);
        assert!(c.sizes.iter().sum::<usize>() == 2);
        assert_eq!(kmeans(&[vec![3.0]], 1, 9).unwrap().representatives, [0]);
    }
}
