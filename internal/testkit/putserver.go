package testkit

import (
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
)

// PutServer is a real HTTP server on loopback that keeps what is PUT to it with the
// right bearer token (201 Created), like a sample upload endpoint. While it is down
// it refuses with 503: for the first Fail requests, or for all of them while Fail is
// negative. A request without the token gets 401, any other method 405. The test's
// cleanup closes it.
type PutServer struct {
	*httptest.Server
	token string

	// mu protects the fields below.
	mu       sync.Mutex
	fail     int
	received PutLog
}

// PutLog is what a PutServer was sent.
type PutLog struct {
	Bodies  map[string][]byte // the last body stored at each path
	Times   map[string]int    // how many PUTs to each path were stored
	Order   []string          // the paths in the order they were stored
	Refused int               // requests refused with 503 while down
}

// NewPutServer starts a PutServer that wants token ("": none) and is down for the
// first fail requests (negative: until SetFail).
func NewPutServer(t testing.TB, token string, fail int) *PutServer {
	s := &PutServer{token: token, fail: fail, received: PutLog{Bodies: map[string][]byte{}, Times: map[string]int{}}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *PutServer) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.token != "" && r.Header.Get("Authorization") != "Bearer "+s.token:
		http.Error(w, "no token", http.StatusUnauthorized)
	case r.Method != http.MethodPut || err != nil:
		http.Error(w, "PUT only", http.StatusMethodNotAllowed)
	case s.fail != 0:
		if s.fail > 0 {
			s.fail--
		}
		s.received.Refused++
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	default:
		s.received.Bodies[r.URL.Path] = body
		s.received.Times[r.URL.Path]++
		s.received.Order = append(s.received.Order, r.URL.Path)
		w.WriteHeader(http.StatusCreated)
	}
}

// SetFail makes the server refuse the next n requests (negative: all of them; 0: up).
func (s *PutServer) SetFail(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = n
}

// Received returns a copy of what the server was sent so far.
func (s *PutServer) Received() PutLog {
	s.mu.Lock()
	defer s.mu.Unlock()
	return PutLog{
		Bodies:  maps.Clone(s.received.Bodies),
		Times:   maps.Clone(s.received.Times),
		Order:   slices.Clone(s.received.Order),
		Refused: s.received.Refused,
	}
}
