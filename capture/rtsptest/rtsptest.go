// Package rtsptest runs a real RTSP server in the test process, on 127.0.0.1 with
// ports the OS chooses, serving an H.264 clip in a loop. It is for capture's tests
// and anything else that needs a camera on loopback; only tests import it.
//
// The clip is encoded at test time with ffmpeg (installed by scripts/install-deps)
// from the repository's assets/footage/people.mp4 into t.TempDir(). The server
// speaks RTSP over TCP (interleaved) and UDP, can require credentials, and can
// stall (Pause), die (Stop) and come back on the same ports (Restart), so a test can
// watch a camera supervise a real stream.
package rtsptest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/description"
	"github.com/bluenviron/gortsplib/v4/pkg/format"
	"github.com/bluenviron/gortsplib/v4/pkg/liberrors"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
)

// Options configure a Server. The zero value serves a 320-pixel-wide, 25 fps, 4 s
// loop of the repository's clip at path "stream" with no authentication.
type Options struct {
	// Path is the one stream path served, without the leading slash; any other
	// path is answered 404 Not Found. Default "stream".
	Path string
	// User and Password, if User is set, are required (basic or digest auth);
	// otherwise the server answers 401 Unauthorized. URL embeds them.
	User, Password string
	// Clip is the video to serve. Default: assets/footage/people.mp4 of this
	// repository.
	Clip string
	// Width of the served frames in pixels (the height keeps the aspect ratio,
	// rounded to even). Default 320.
	Width int
	// FPS of the served stream. Default 25.
	FPS int
	// Seconds of the clip to loop. Default 4.
	Seconds float64
	// GOP is the distance between IDR frames. Default 10.
	GOP int
}

// Server is a running RTSP server. Its methods are safe to call from any goroutine.
type Server struct {
	t    testing.TB
	opts Options
	aus  []accessUnit // the clip, one entry per frame
	sps  []byte
	pps  []byte
	// addresses are fixed at Start so that Restart comes back on the same ports.
	rtspAddr, rtpAddr, rtcpAddr string

	ctl sync.Mutex // serialises Stop and Restart; held across server start and close

	mu     sync.Mutex // guards the fields below; never held while the server starts or closes
	srv    *gortsplib.Server
	stream *gortsplib.ServerStream
	stop   chan struct{} // closed to stop the writer
	done   chan struct{} // closed when the writer has returned
	paused bool
	setups []string // transport of each accepted SETUP, "tcp" or "udp"
	// prebound sockets handed to the next server start: the first start uses the
	// sockets that reserved the ports, a Restart binds the same addresses anew.
	tcpLn  net.Listener
	udpPCs map[string]net.PacketConn
}

type accessUnit struct {
	nalus [][]byte
	idr   bool
}

// Start encodes the clip, starts the server and registers Stop with t.Cleanup.
// It fails the test if ffmpeg is missing or the server cannot start.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.Path == "" {
		opts.Path = "stream"
	}
	if opts.Width == 0 {
		opts.Width = 320
	}
	if opts.FPS == 0 {
		opts.FPS = 25
	}
	if opts.Seconds == 0 {
		opts.Seconds = 4
	}
	if opts.GOP == 0 {
		opts.GOP = 10
	}
	if opts.Clip == "" {
		opts.Clip = defaultClip(t)
	}
	s := &Server{t: t, opts: opts}
	s.loadClip(t)
	s.reservePorts(t)
	t.Cleanup(s.Stop)
	if err := s.start(); err != nil {
		t.Fatalf("rtsptest: start server: %v", err)
	}
	return s
}

// defaultClip finds assets/footage/people.mp4 from this source file's directory.
func defaultClip(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("rtsptest: cannot locate the repository's clip; set Options.Clip")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "assets", "footage", "people.mp4")
}

// loadClip encodes the clip to Annex-B H.264 and splits it into access units.
func (s *Server) loadClip(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(s.opts.Clip); err != nil {
		t.Fatalf("rtsptest: clip: %v", err)
	}
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		t.Fatalf("rtsptest: ffmpeg not found (run scripts/install-deps): %v", err)
	}
	out := filepath.Join(t.TempDir(), "clip.h264")
	cmd := exec.Command(ffmpeg, "-v", "error", "-nostdin", "-y", "-i", s.opts.Clip,
		"-t", strconv.FormatFloat(s.opts.Seconds, 'f', -1, 64),
		"-vf", fmt.Sprintf("scale=%d:-2,fps=%d", s.opts.Width, s.opts.FPS),
		"-an", "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", strconv.Itoa(s.opts.GOP),
		"-pix_fmt", "yuv420p", "-f", "h264", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rtsptest: encode %s: %v\n%s", s.opts.Clip, err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var nalus h264.AnnexB
	if err := nalus.Unmarshal(data); err != nil {
		t.Fatalf("rtsptest: split %s: %v", out, err)
	}
	s.aus, s.sps, s.pps = splitAccessUnits(nalus)
	if len(s.aus) == 0 || s.sps == nil || s.pps == nil {
		t.Fatalf("rtsptest: %s has %d frames, SPS %t, PPS %t", out, len(s.aus), s.sps != nil, s.pps != nil)
	}
}

// splitAccessUnits groups NALUs into frames: a slice whose first_mb_in_slice is 0
// starts a frame, and non-VCL NALUs (SPS, PPS, SEI, AUD) join the slice after them.
func splitAccessUnits(nalus [][]byte) (aus []accessUnit, sps, pps []byte) {
	var pending [][]byte
	for _, n := range nalus {
		if len(n) == 0 {
			continue
		}
		typ := h264.NALUType(n[0] & 0x1f)
		switch typ {
		case h264.NALUTypeSPS:
			if sps == nil {
				sps = n
			}
		case h264.NALUTypePPS:
			if pps == nil {
				pps = n
			}
		}
		if typ != h264.NALUTypeIDR && typ != h264.NALUTypeNonIDR {
			pending = append(pending, n)
			continue
		}
		// first_mb_in_slice is ue(v) right after the NAL header: a leading 1 bit is 0.
		firstSlice := len(n) < 2 || n[1]&0x80 != 0
		if firstSlice || len(aus) == 0 {
			aus = append(aus, accessUnit{nalus: append(pending, n), idr: typ == h264.NALUTypeIDR})
		} else {
			last := &aus[len(aus)-1]
			last.nalus = append(append(last.nalus, pending...), n)
		}
		pending = nil
	}
	return aus, sps, pps
}

// reservePorts binds the RTSP port and an even/odd RTP/RTCP port pair on
// 127.0.0.1, letting the OS choose; the sockets are handed to the first start.
func (s *Server) reservePorts(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("rtsptest: listen: %v", err)
	}
	rtp, rtcp, err := udpPair()
	if err != nil {
		ln.Close()
		t.Fatalf("rtsptest: %v", err)
	}
	s.tcpLn = ln
	s.rtspAddr = ln.Addr().String()
	s.rtpAddr, s.rtcpAddr = rtp.LocalAddr().String(), rtcp.LocalAddr().String()
	s.udpPCs = map[string]net.PacketConn{s.rtpAddr: rtp, s.rtcpAddr: rtcp}
}

// udpPair binds two consecutive UDP ports, the first even, as RTP requires.
func udpPair() (rtp, rtcp net.PacketConn, err error) {
	for range 100 {
		a, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		port := a.LocalAddr().(*net.UDPAddr).Port
		other := port + 1
		if port%2 == 1 {
			other = port - 1
		}
		b, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(other)))
		if err != nil {
			a.Close()
			continue
		}
		if port%2 == 1 {
			return b, a, nil
		}
		return a, b, nil
	}
	return nil, nil, fmt.Errorf("no free even/odd UDP port pair on 127.0.0.1")
}

func (s *Server) listen(network, address string) (net.Listener, error) {
	s.mu.Lock()
	ln := s.tcpLn
	s.tcpLn = nil
	s.mu.Unlock()
	if ln != nil {
		return ln, nil
	}
	return net.Listen(network, address)
}

func (s *Server) listenPacket(network, address string) (net.PacketConn, error) {
	s.mu.Lock()
	pc := s.udpPCs[address]
	delete(s.udpPCs, address)
	s.mu.Unlock()
	if pc != nil {
		return pc, nil
	}
	return net.ListenPacket(network, address)
}

func (s *Server) start() error {
	s.ctl.Lock()
	defer s.ctl.Unlock()
	s.mu.Lock()
	running := s.srv != nil
	s.mu.Unlock()
	if running {
		return nil
	}
	srv := &gortsplib.Server{
		Handler:        &handler{s: s},
		RTSPAddress:    s.rtspAddr,
		UDPRTPAddress:  s.rtpAddr,
		UDPRTCPAddress: s.rtcpAddr,
		Listen:         s.listen,
		ListenPacket:   s.listenPacket,
	}
	if err := srv.Start(); err != nil {
		return err
	}
	stream := &gortsplib.ServerStream{
		Server: srv,
		Desc: &description.Session{Medias: []*description.Media{{
			Type: description.MediaTypeVideo,
			Formats: []format.Format{&format.H264{
				PayloadTyp: 96, PacketizationMode: 1, SPS: s.sps, PPS: s.pps,
			}},
		}}},
	}
	if err := stream.Initialize(); err != nil {
		srv.Close()
		return err
	}
	stop, done := make(chan struct{}), make(chan struct{})
	s.mu.Lock()
	s.srv, s.stream, s.stop, s.done = srv, stream, stop, done
	s.mu.Unlock()
	go s.write(stream, stop, done)
	return nil
}

// write sends the clip's frames in a loop at the clip's rate until stop is closed.
// While paused it sends nothing; after Resume it waits for the next IDR frame so the
// decoder does not see references to frames it never received.
func (s *Server) write(stream *gortsplib.ServerStream, stop, done chan struct{}) {
	defer close(done)
	media := stream.Desc.Medias[0]
	enc, err := media.Formats[0].(*format.H264).CreateEncoder()
	if err != nil {
		s.t.Errorf("rtsptest: H.264 encoder: %v", err)
		return
	}
	tick := time.NewTicker(time.Second / time.Duration(s.opts.FPS))
	defer tick.Stop()
	step := uint32(90000 / s.opts.FPS)
	var ts uint32
	wasPaused := false
	for i := 0; ; i = (i + 1) % len(s.aus) {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		ts += step // RTP time follows wall time, paused or not
		s.mu.Lock()
		paused := s.paused
		s.mu.Unlock()
		if paused {
			wasPaused = true
			continue
		}
		au := s.aus[i]
		if wasPaused && !au.idr {
			continue
		}
		wasPaused = false
		pkts, err := enc.Encode(au.nalus)
		if err != nil {
			s.t.Errorf("rtsptest: encode frame %d: %v", i, err)
			return
		}
		for _, p := range pkts {
			p.Timestamp = ts
			// An error here means the stream is closing: Stop is under way.
			if stream.WritePacketRTP(media, p) != nil {
				return
			}
		}
	}
}

// URL returns the stream URL for path (without the leading slash), with the
// server's credentials in it if it has any. Use Options.Path for the served stream.
func (s *Server) URL(path string) string {
	u := url.URL{Scheme: "rtsp", Host: s.rtspAddr, Path: "/" + path}
	if s.opts.User != "" {
		u.User = url.UserPassword(s.opts.User, s.opts.Password)
	}
	return u.String()
}

// Addr is the server's RTSP address, host:port.
func (s *Server) Addr() string { return s.rtspAddr }

// Stop closes the server and every connection: a reader sees the stream die.
// It returns once the server's goroutines have exited; a second Stop does nothing.
func (s *Server) Stop() {
	s.ctl.Lock()
	defer s.ctl.Unlock()
	s.mu.Lock()
	srv, stream, stop, done := s.srv, s.stream, s.stop, s.done
	s.srv, s.stream, s.stop, s.done = nil, nil, nil, nil
	ln, pcs := s.tcpLn, s.udpPCs
	s.tcpLn, s.udpPCs = nil, nil
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	for _, pc := range pcs {
		pc.Close()
	}
	if srv == nil {
		return
	}
	close(stop)
	<-done
	stream.Close()
	srv.Close()
}

// Restart starts a stopped server again on the same ports (stopping it first if it
// is running). It fails the test if the ports are no longer free.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("rtsptest: restart on %s: %v", s.rtspAddr, err)
	}
}

// Pause stops sending frames without closing anything: to a reader the stream
// stalls.
func (s *Server) Pause() {
	s.mu.Lock()
	s.paused = true
	s.mu.Unlock()
}

// Resume sends frames again after Pause, starting at the next IDR frame.
func (s *Server) Resume() {
	s.mu.Lock()
	s.paused = false
	s.mu.Unlock()
}

// Transports lists the transport ("tcp" or "udp") of every stream setup the server
// accepted, in order, across restarts.
func (s *Server) Transports() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.setups...)
}

// Frames is the number of frames in the looped clip.
func (s *Server) Frames() int { return len(s.aus) }

// FrameSize is the width and height of the served frames.
func (s *Server) FrameSize() (w, h int) {
	// The height keeps the clip's aspect ratio, rounded to even, as scale=W:-2 does;
	// read it from the SPS so that any clip works.
	var sps h264.SPS
	if err := sps.Unmarshal(s.sps); err != nil {
		s.t.Fatalf("rtsptest: parse SPS: %v", err)
	}
	return sps.Width(), sps.Height()
}

// handler answers RTSP requests for the one stream.
type handler struct{ s *Server }

func (h *handler) check(conn *gortsplib.ServerConn, req *base.Request, path string) (*base.Response, *gortsplib.ServerStream, error) {
	s := h.s
	if s.opts.User != "" && !conn.VerifyCredentials(req, s.opts.User, s.opts.Password) {
		return &base.Response{StatusCode: base.StatusUnauthorized}, nil, liberrors.ErrServerAuth{}
	}
	if path != "/"+s.opts.Path {
		return &base.Response{StatusCode: base.StatusNotFound}, nil, fmt.Errorf("no stream at %q", path)
	}
	s.mu.Lock()
	stream := s.stream
	s.mu.Unlock()
	if stream == nil {
		return &base.Response{StatusCode: base.StatusServiceUnavailable}, nil, fmt.Errorf("server stopping")
	}
	return &base.Response{StatusCode: base.StatusOK}, stream, nil
}

// OnDescribe implements gortsplib.ServerHandlerOnDescribe.
func (h *handler) OnDescribe(ctx *gortsplib.ServerHandlerOnDescribeCtx) (*base.Response, *gortsplib.ServerStream, error) {
	return h.check(ctx.Conn, ctx.Request, ctx.Path)
}

// OnSetup implements gortsplib.ServerHandlerOnSetup.
func (h *handler) OnSetup(ctx *gortsplib.ServerHandlerOnSetupCtx) (*base.Response, *gortsplib.ServerStream, error) {
	res, stream, err := h.check(ctx.Conn, ctx.Request, ctx.Path)
	if stream != nil {
		tr := "udp"
		if ctx.Transport == gortsplib.TransportTCP {
			tr = "tcp"
		}
		h.s.mu.Lock()
		h.s.setups = append(h.s.setups, tr)
		h.s.mu.Unlock()
	}
	return res, stream, err
}

// OnPlay implements gortsplib.ServerHandlerOnPlay.
func (h *handler) OnPlay(*gortsplib.ServerHandlerOnPlayCtx) (*base.Response, error) {
	return &base.Response{StatusCode: base.StatusOK}, nil
}
