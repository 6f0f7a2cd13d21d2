package upload

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// HandlerOptions configure the HTTP receiving side.
type HandlerOptions struct {
	// Dir receives each file as Dir/<device>/<file>.
	Dir string
	// Token, when set, is required as "Authorization: Bearer <token>" (else 401).
	Token string
	// MaxFile is the largest body accepted (DefaultMaxFile); larger is 413.
	MaxFile int64
	// Stored, when set, is called after each file is stored, with its path.
	Stored func(device, name, path string, size int64)
}

// NewHandler returns the receiving side of the HTTP sender: PUT .../<device>/<file>
// (the last two segments of the path, so it can sit under any prefix) stores the body
// atomically as Dir/<device>/<file>: 201 when the file is new, 204 when it replaced
// one (a sample sent again). 401 without the token, 400 for a name that is not a
// sample's, 405 for another method, 413 over MaxFile.
func NewHandler(opts HandlerOptions) http.Handler {
	if opts.MaxFile <= 0 {
		opts.MaxFile = DefaultMaxFile
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if opts.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(opts.Token)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="vigil samples"`)
				http.Error(w, "a bearer token is required (samples.upload.token)", http.StatusUnauthorized)
				return
			}
		}
		if r.Method != http.MethodPut {
			w.Header().Set("Allow", http.MethodPut)
			http.Error(w, "PUT <device>/<file> only", http.StatusMethodNotAllowed)
			return
		}
		// Split before unescaping: an escaped '/' stays in its segment (and fails the
		// name check) instead of making a segment of its own.
		segs := strings.Split(strings.Trim(r.URL.EscapedPath(), "/"), "/")
		if len(segs) < 2 {
			http.Error(w, fmt.Sprintf("path %q is not .../<device>/<file>", r.URL.Path), http.StatusBadRequest)
			return
		}
		device, err1 := url.PathUnescape(segs[len(segs)-2])
		name, err2 := url.PathUnescape(segs[len(segs)-1])
		if err := errors.Join(err1, err2, CheckDevice(device), CheckFileName(name)); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.ContentLength > opts.MaxFile {
			http.Error(w, fmt.Sprintf("%d bytes is over the %d a file may have", r.ContentLength, opts.MaxFile), http.StatusRequestEntityTooLarge)
			return
		}
		body := http.MaxBytesReader(w, r.Body, opts.MaxFile)
		cw := &countingReader{r: body}
		path, replaced, err := saveAtomic(opts.Dir, device, name, cw)
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			http.Error(w, fmt.Sprintf("over the %d bytes a file may have", opts.MaxFile), http.StatusRequestEntityTooLarge)
			return
		case err != nil:
			// A body cut short is the client's; a disk that fails is ours. Either way
			// the sender retries.
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if opts.Stored != nil {
			opts.Stored(device, name, path, cw.n)
		}
		if replaced {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
