//! `vigil eval`: image-level metrics on an MVTec-layout folder
//! (`train/good`, `test/good`, `test/<defect>/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::features::{list_images, FeatureError};
use crate::model::metrics::{auroc, binary_stats, BinaryStats};

/// The test split: every image with its folder name (`good` = normal).
#[derive(Debug, Clone)]
pub struct TestSet {
    pub paths: Vec<PathBuf>,
    pub groups: Vec<String>,
}

impl TestSet {
    pub fn labels(&self) -> Vec<bool> {
        self.groups.iter().map(|g| g != "good").collect()
    }
}

/// `test/good` first, then each defect folder in name order.
pub fn mvtec_test_set(root: &Path) -> Result<TestSet, FeatureError> {
    let test = root.join("test");
    let rd = std::fs::read_dir(&test).map_err(|source| FeatureError::List {
        path: test.clone(),
        source,
    })?;
    let mut defects: Vec<String> = Vec::new();
    for e in rd {
        let e = e.map_err(|source| FeatureError::List {
            path: test.clone(),
            source,
        })?;
        if e.path().is_dir() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != "good" {
                defects.push(name);
            }
        }
    }
    defects.sort();
    let mut set = TestSet {
        paths: Vec::new(),
        groups: Vec::new(),
    };
    for g in std::iter::once("good".to_string()).chain(defects) {
        for p in list_images(&test.join(&g))? {
            set.paths.push(p);
            set.groups.push(g.clone());
        }
    }
    Ok(set)
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Image AUROC, all defects vs good (anomaly score = −log-density).
    pub auroc: f64,
    /// Each defect folder vs `test/good`.
    pub per_defect: BTreeMap<String, f64>,
    /// At the model's own threshold.
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub confusion: BinaryStats,
    /// Log-density threshold (anomalous iff below).
    pub threshold: f64,
    pub threshold_pred_score: f64,
    pub n_train: usize,
    pub n_test: usize,
    pub model_id: String,
}

/// Metrics from per-image log-densities.
pub fn report(
    set: &TestSet,
    log_densities: &[f64],
    threshold: f64,
    threshold_pred_score: f64,
    n_train: usize,
    model_id: &str,
) -> EvalReport {
    let labels = set.labels();
    let anomaly: Vec<f64> = log_densities.iter().map(|s| -s).collect();
    let overall = auroc(&anomaly, &labels).unwrap_or(f64::NAN);
    let mut per_defect = BTreeMap::new();
    let groups: Vec<&String> = {
        let mut g: Vec<&String> = set.groups.iter().filter(|g| *g != "good").collect();
        g.dedup();
        g
    };
    for g in groups {
        let (s, l): (Vec<f64>, Vec<bool>) = set
            .groups
            .iter()
            .zip(&anomaly)
            .filter(|(grp, _)| *grp == g || *grp == "good")
            .map(|(grp, a)| (*a, grp == g))
            .unzip();
        per_defect.insert(g.clone(), auroc(&s, &l).unwrap_or(f64::NAN));
    }
    let predicted: Vec<bool> = log_densities.iter().map(|&s| s < threshold).collect();
    let st = binary_stats(&predicted, &labels);
    EvalReport {
        auroc: overall,
        per_defect,
        f1: st.f1,
        precision: st.precision,
        recall: st.recall,
        confusion: st,
        threshold,
        threshold_pred_score,
        n_train,
        n_test: set.paths.len(),
        model_id: model_id.to_string(),
    }
}
