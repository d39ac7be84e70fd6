//! Feature presets: which backbone graph, input normalisation and PCA size a model is
//! fitted with. Pure data, no I/O. `docs/accuracy.md` has the research behind them.

use std::str::FromStr;

use crate::preprocess::Normalization;

/// What goes into the DFKDE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeaturePreset {
    /// anomalib-compatible (the default): EfficientNet-Lite0's 1280-d head, mean-pooled,
    /// ImageNet mean/std, PCA 16. Reproduces anomalib 2.7.0's AUROC.
    #[default]
    Anomalib,
    /// Better for surface defects: the 112-channel stride-16 stage (block 10), mean-pooled,
    /// the backbone's native input normalisation `(x − 127)/128`, PCA 64 (32 / 16 on small
    /// training sets). +0.117 mean AUROC over `anomalib` on magnetic_tile and elpv_mono at
    /// 0.69× its backbone cost (the graph stops after block 10).
    MidStage,
}

impl FeaturePreset {
    pub const ALL: [FeaturePreset; 2] = [FeaturePreset::Anomalib, FeaturePreset::MidStage];

    pub fn name(self) -> &'static str {
        match self {
            FeaturePreset::Anomalib => "anomalib",
            FeaturePreset::MidStage => "mid-stage",
        }
    }

    /// The artifact's `features` field (`pooled` is the historical name of `anomalib`).
    pub fn artifact_name(self) -> &'static str {
        match self {
            FeaturePreset::Anomalib => "pooled",
            FeaturePreset::MidStage => "mid-stage",
        }
    }

    /// The preset an artifact was fitted with (unknown names: anomalib's).
    pub fn from_artifact_name(s: &str) -> FeaturePreset {
        FeaturePreset::ALL
            .into_iter()
            .find(|p| p.artifact_name() == s || p.name() == s)
            .unwrap_or_default()
    }

    /// The preset whose shipped backbone file is `path`'s file name (any other file:
    /// anomalib's). Used for a camera's first calibration, which has no model to copy
    /// the preset from.
    pub fn for_backbone(path: &std::path::Path) -> FeaturePreset {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        FeaturePreset::ALL
            .into_iter()
            .find(|p| p.backbone_file() == name)
            .unwrap_or_default()
    }

    /// The ONNX file under `models/` (or /usr/share/vigil/models) this preset runs.
    pub fn backbone_file(self) -> &'static str {
        match self {
            FeaturePreset::Anomalib => "efficientnet_lite0_pooled.onnx",
            FeaturePreset::MidStage => "efficientnet_lite0_s16.onnx",
        }
    }

    pub fn normalization(self) -> Normalization {
        match self {
            FeaturePreset::Anomalib => Normalization::Imagenet,
            FeaturePreset::MidStage => Normalization::Tflite,
        }
    }

    /// PCA components for a fit on `n` feature vectors (the smallest fit of a run: the
    /// hold-out fit). The KDE needs n ≥ 2k to be well-posed.
    pub fn n_components(self, n: usize) -> usize {
        match self {
            FeaturePreset::Anomalib => 16,
            FeaturePreset::MidStage if n >= 128 => 64,
            FeaturePreset::MidStage if n >= 64 => 32,
            FeaturePreset::MidStage => 16,
        }
    }
}

impl FromStr for FeaturePreset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FeaturePreset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown feature preset '{s}' (anomalib | mid-stage)"))
    }
}

impl std::fmt::Display for FeaturePreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_artifacts_keep_the_historical_name() {
        for p in FeaturePreset::ALL {
            assert_eq!(p.name().parse::<FeaturePreset>(), Ok(p));
            assert_eq!(FeaturePreset::from_artifact_name(p.artifact_name()), p);
        }
        assert_eq!(
            FeaturePreset::from_artifact_name("pooled"),
            FeaturePreset::Anomalib
        );
        assert!("multi".parse::<FeaturePreset>().is_err());
    }

    #[test]
    fn mid_stage_shrinks_pca_on_small_training_sets() {
        let p = FeaturePreset::MidStage;
        assert_eq!(
            (p.n_components(480), p.n_components(100), p.n_components(40)),
            (64, 32, 16)
        );
        assert_eq!(FeaturePreset::Anomalib.n_components(10_000), 16);
    }
}
