package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vigil-edge/vigil/sync/upload"
)

const samplesUsage = `Usage: vigil samples receive --out DIR (--broker URL [flags] | --listen ADDR [--token T])

Receives the samples the devices upload (samples.upload in their configs) and writes
each file, whole and checked, to DIR/<device>/<file> (atomically: a temporary file,
then a rename), printing a line per file, until Ctrl-C.

--broker: for samples.upload.via: mqtt. Subscribes to <prefix>/+/samples/# at QoS 1
with a persistent session under --client-id, puts each file together from its chunks
and checks its size and SHA-256 against its manifest. A device counts a sample as
uploaded once the BROKER has acknowledged it, so keep this receiver's session: start
it once before the devices upload, then always with the same --client-id; the broker
queues the samples while it is stopped (within its max_queued_messages and
persistent_client_expiration). Chunks are written to DIR/.partial before they are
acknowledged, so a receiver stopped in the middle of a file finishes it at its next
start; a file that cannot be saved is not acknowledged, and comes again.

--listen: for samples.upload.via: http (upload.url http://ADDR). Takes PUT
.../<device>/<file>: 401 without --token (when set), 400 for a name that is not a
sample's, 413 over 64MiB; 201 for a new file, 204 for one received again. Plain HTTP:
put a TLS proxy in front for https.

Both may be given. Exit status 0 on Ctrl-C, 1 when the broker or address cannot be
used, 2 on usage errors. The token may also come from $VIGIL_SAMPLES_TOKEN.

Flags:
`

func samplesReceive(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("samples receive", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "directory the files are written to, as DIR/<device>/<file> (required)")
	bf := addBrokerFlags(fs)
	clientID := fs.String("client-id", upload.DefaultClientID, "MQTT client id; keep it across restarts, the broker queues samples for it")
	listen := fs.String("listen", "", "serve HTTP PUTs on this address (host:port)")
	token := fs.String("token", "", "bearer token the HTTP uploads must carry (samples.upload.token; better: $VIGIL_SAMPLES_TOKEN)")
	fs.Usage = func() { fmt.Fprint(stderr, samplesUsage); fs.PrintDefaults() }
	pos, err := parseArgs(fs, args)
	if err != nil {
		return parseExit(err)
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "vigil samples receive: "+format+"\n\n", a...)
		fs.Usage()
		return exitUsage
	}
	switch {
	case len(pos) > 0:
		return usageErr("unexpected argument %q", pos[0])
	case *out == "":
		return usageErr("--out is required")
	case bf.broker.URL == "" && *listen == "":
		return usageErr("--broker or --listen is required")
	case *clientID == "":
		return usageErr("--client-id must not be empty")
	}
	if *token == "" {
		*token = os.Getenv("VIGIL_SAMPLES_TOKEN")
	}
	broker, err := bf.resolve()
	if err != nil {
		fmt.Fprintf(stderr, "vigil samples receive: %v\n", err)
		return exitUsage
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintf(stderr, "vigil samples receive: %v\n", err)
		return exitFailed
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var mu sync.Mutex // one line at a time on stdout and stderr
	say := func(w io.Writer, format string, a ...any) {
		mu.Lock()
		fmt.Fprintf(w, format, a...)
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var failure error // the first part that failed; guarded by mu
	fail := func(err error) {
		mu.Lock()
		if failure == nil {
			failure = err
		}
		mu.Unlock()
		cancel()
	}
	var wg sync.WaitGroup
	if *listen != "" {
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			fmt.Fprintf(stderr, "vigil samples receive: --listen: %v\n", err)
			return exitFailed
		}
		srv := &http.Server{
			ReadHeaderTimeout: 10 * time.Second,
			Handler: upload.NewHandler(upload.HandlerOptions{Dir: *out, Token: *token, Stored: func(device, name, path string, size int64) {
				say(stdout, "%s/%s %d bytes (http)\n", device, name, size)
			}}),
		}
		say(stdout, "listening on http://%s\n", l.Addr())
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				fail(fmt.Errorf("http: %w", err))
			}
		}()
		go func() {
			defer wg.Done()
			<-ctx.Done()
			shut, done := context.WithTimeout(context.Background(), 5*time.Second)
			defer done()
			srv.Shutdown(shut)
		}()
	}
	if broker.URL != "" {
		// Chunks are on disk before they are acknowledged, so a receiver stopped or
		// killed in the middle of a file picks them up at its next start. A device
		// id never starts with '.', so the spool is no device's directory.
		spool := filepath.Join(*out, ".partial")
		r, err := upload.NewReceiver(bf.topicPrefix, upload.ReceiverOptions{Spool: spool})
		if err != nil {
			fmt.Fprintf(stderr, "vigil samples receive: %v\n", err)
			return exitFailed
		}
		if st := r.Stats(); st.Pending > 0 {
			say(stdout, "%d chunks of %d files taken from %s\n", st.Recovered, st.Pending, spool)
		}
		broker.ClientID = *clientID
		opts := upload.SubscribeOptions{
			Broker: broker, Prefix: bf.topicPrefix, Logger: slog.New(slog.NewTextHandler(stderr, nil)),
			Subscribed: func(filter string) {
				say(stdout, "subscribed to %s as %s (persistent session)\n", filter, *clientID)
			},
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := upload.Subscribe(ctx, opts, r, func(f *upload.File, err error) error {
				if err != nil {
					say(stderr, "vigil samples receive: %v\n", err)
					return nil
				}
				// Saved before the manifest is acknowledged (Subscribe's contract); when
				// it cannot be (a full disk), the manifest is not acknowledged and the
				// chunks stay in the spool, so it is tried again.
				if _, err := f.Save(*out); err != nil {
					say(stderr, "vigil samples receive: %v (kept in %s; tried again)\n", err, spool)
					return err
				}
				say(stdout, "%s/%s %d bytes (mqtt, %d chunks)\n", f.Device, f.Name, len(f.Data), f.Chunks)
				return nil
			})
			if err != nil {
				fail(fmt.Errorf("mqtt: %w", err))
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	if failure != nil {
		fmt.Fprintf(stderr, "vigil samples receive: %v\n", failure)
		return exitFailed
	}
	return exitOK
}
