"""Where frames and packets come from: PyAV inputs (testsrc, V4L2, RTSP, files), picamera2, passthrough."""
