#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("GStreamer failed to initialise: {0}")]
    Init(String),
    #[error(
        "GStreamer elements missing: {0} (Debian/Ubuntu: apt-get install gstreamer1.0-plugins-base \
         gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x)"
    )]
    MissingElements(String),
    #[error("could not build pipeline: {0}")]
    Build(String),
    #[error("{0}")]
    Encoder(String),
    #[error("pipeline failed: {0}")]
    Pipeline(String),
}

impl From<gstreamer::glib::BoolError> for EngineError {
    fn from(e: gstreamer::glib::BoolError) -> Self {
        EngineError::Build(e.to_string())
    }
}

impl From<gstreamer::StateChangeError> for EngineError {
    fn from(e: gstreamer::StateChangeError) -> Self {
        EngineError::Pipeline(e.to_string())
    }
}
