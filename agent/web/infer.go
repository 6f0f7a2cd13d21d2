package web

import (
	"bytes"
	"errors"
	"io"
	"net/http"

	"github.com/vigil-edge/vigil/infer"
)

// POST /api/infer: other machines on the LAN ask the device's model about an image
// (JPEG or PNG body; ?model= picks the model, default the first). It shares the detector
// with the cameras, so it is bounded: http.infer_max_bytes per body (413 beyond) and
// http.infer_concurrency requests at a time (429 beyond), and it can never starve the
// camera pipelines. With http.token set, it needs the token.

// InferResult is POST /api/infer's answer.
type InferResult struct {
	Model       string            `json:"model"`
	Bundle      string            `json:"bundle"`
	Version     string            `json:"version"`
	Width       int               `json:"width"`
	Height      int               `json:"height"`
	InferenceMS float64           `json:"inference_ms"`
	Detections  []infer.Detection `json:"detections"`
}

var (
	jpegMagic = []byte{0xFF, 0xD8, 0xFF}
	pngMagic  = []byte{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'}
)

func (s *api) infer(w http.ResponseWriter, r *http.Request) {
	c := s.dev.Settings()
	if c.Token != "" {
		if got := tokenOf(r); !sameToken(got, c.Token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vigil"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
	}
	select {
	case s.inferSlots <- struct{}{}:
		defer func() { <-s.inferSlots }()
	default:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, "%d inference requests are already running (http.infer_concurrency)", cap(s.inferSlots))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(c.InferMaxBytes)))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, "the image is over http.infer_max_bytes (%d bytes)", int64(c.InferMaxBytes))
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "read the body: %v", err)
		return
	}
	// Only JPEG and PNG reach OpenCV's decoders.
	if !bytes.HasPrefix(body, jpegMagic) && !bytes.HasPrefix(body, pngMagic) {
		writeError(w, http.StatusBadRequest, "the body is not a JPEG or PNG image")
		return
	}
	res, err := s.dev.Detect(r.URL.Query().Get("model"), body)
	if err != nil {
		writeErr(w, err)
		return
	}
	if res.Detections == nil {
		res.Detections = []infer.Detection{}
	}
	writeJSON(w, http.StatusOK, res)
}
