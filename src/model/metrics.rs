//! Evaluation metrics: exact ROC AUC (ties count ½, as torchmetrics / scikit-learn),
//! ROC curve points, precision / recall / F1.

/// Exact area under the ROC curve for "higher score = positive". `None` when one class
/// is missing or a score is NaN.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.len() != labels.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // Mann–Whitney U with average ranks for ties.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            if labels[o] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// ROC curve as (false-positive rate, true-positive rate) points, from (0,0) to (1,1),
/// one point per distinct score.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = labels.iter().filter(|&&l| l).count().max(1) as f64;
    let n_neg = labels.iter().filter(|&&l| !l).count().max(1) as f64;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut pts = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let t = scores[order[i]];
        while i < order.len() && scores[order[i]] == t {
            if labels[order[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        pts.push((fp / n_neg, tp / n_pos));
    }
    pts
}

/// Confusion counts and derived rates for binary predictions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BinaryStats {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub r#fn: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

pub fn binary_stats(predicted: &[bool], labels: &[bool]) -> BinaryStats {
    let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
    for (&p, &l) in predicted.iter().zip(labels) {
        match (p, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let precision = if tp + fp == 0 {
        0.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let recall = if tp + fn_ == 0 {
        0.0
    } else {
        tp as f64 / (tp + fn_) as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    BinaryStats {
        tp,
        fp,
        tn,
        r#fn: fn_,
        precision,
        recall,
        f1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_matches_hand_computed_values_with_ties() {
        // pairs (pos, neg): (0.9>0.1) (0.9>0.5) (0.5=0.5 → ½) (0.5>0.1)  → 3.5 / 4
        let s = [0.9, 0.5, 0.5, 0.1];
        let l = [true, true, false, false];
        assert_eq!(auroc(&s, &l), Some(0.875));
        assert_eq!(auroc(&[0.2, 0.1], &[true, false]), Some(1.0));
        assert_eq!(auroc(&[0.2, 0.1], &[false, true]), Some(0.0));
        assert_eq!(auroc(&[0.2, 0.1], &[true, true]), None);
    }

    #[test]
    fn roc_curve_runs_from_origin_to_one_one() {
        let pts = roc_curve(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]);
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
        assert_eq!(pts.len(), 4);
    }

    #[test]
    fn binary_stats_counts() {
        let st = binary_stats(&[true, true, false, false], &[true, false, true, false]);
        assert_eq!((st.tp, st.fp, st.tn, st.r#fn), (1, 1, 1, 1));
        assert!((st.f1 - 0.5).abs() < 1e-12);
    }
}
