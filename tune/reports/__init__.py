"""Reports: tables (markdown, HTML, CSV), figures, the trade-off, Grad-CAM panels and the HTML report."""
