// clientgo: k8s.io/client-go's own streaming clients (Kubernetes 1.37) against a CRI streaming URL, as kubectl,
// crictl and the API server's proxies use them. The tests run it against moorage's streaming server.
//
//	clientgo exec|attach -transport spdy|websocket|fallback [-protocols P,...] [-stdin] [-tty] [-stderr]
//	    [-width W -height H] [-resize-on MARK -resize WxH] URL
//	    stdin is copied to the command, its stdout and stderr to ours; exits with the command's exit code
//	    (client-go's exec.CodeExitError), or 102 printing "ERROR: <error>" for any other failure.
//	    With -tty, the terminal size is WxH, and becomes -resize once stdout shows MARK.
//	    websocket: client-go's WebSocket executor (v5.channel.k8s.io unless -protocols says otherwise);
//	    fallback: the WebSocket executor, falling back to SPDY on an upgrade failure, as kubectl does.
//	clientgo portforward -transport spdy|websocket|fallback -port P -connections N [-parallel M] URL
//	    client-go's PortForwarder on a local port through one session; N connections, M at once, each sending
//	    "ping <i>\n" and reading the same line back. Prints "OK <N>".
//	    websocket: SPDY tunneled through WebSocket (SPDY/3.1+portforward.k8s.io), as kubectl does.
//	clientgo echo-server -port P
//	    a TCP server echoing every connection back, for a container to run (the binary is static): unlike
//	    busybox nc, whose listen backlog of 1 makes the kernel drop simultaneous connections, it takes the
//	    kernel's full backlog, so a port-forward test measures the forward and not the server.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	streamhttp "k8s.io/streaming/pkg/httpstream"
	"k8s.io/utils/exec"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ERROR: "+format+"\n", args...)
	os.Exit(102)
}

// upgradeFailed: the WebSocket upgrade was refused, so SPDY is worth a try (kubectl's test; client-go 1.37
// reports it with either httpstream package's error type).
func upgradeFailed(err error) bool {
	return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err) ||
		streamhttp.IsUpgradeFailure(err) || streamhttp.IsHTTPSProxyError(err)
}

func executor(transport, raw string, protocols []string) remotecommand.Executor {
	config := &rest.Config{}
	parsed, err := url.Parse(raw)
	if err != nil {
		fail("bad url: %v", err)
	}
	spdyExec, err := remotecommand.NewSPDYExecutor(config, "POST", parsed)
	if err != nil {
		fail("spdy executor: %v", err)
	}
	var wsExec remotecommand.Executor
	if len(protocols) > 0 {
		wsExec, err = remotecommand.NewWebSocketExecutorForProtocols(config, "GET", raw, protocols...)
	} else {
		wsExec, err = remotecommand.NewWebSocketExecutor(config, "GET", raw)
	}
	if err != nil {
		fail("websocket executor: %v", err)
	}
	switch transport {
	case "spdy":
		return spdyExec
	case "websocket":
		return wsExec
	case "fallback":
		fallback, err := remotecommand.NewFallbackExecutor(wsExec, spdyExec, upgradeFailed)
		if err != nil {
			fail("fallback executor: %v", err)
		}
		return fallback
	}
	fail("unknown transport %q", transport)
	return nil
}

// sizes is the terminal's size, then another once stdout shows a mark.
type sizes struct {
	ch chan remotecommand.TerminalSize
}

func (s *sizes) Next() *remotecommand.TerminalSize {
	size, ok := <-s.ch
	if !ok {
		return nil
	}
	return &size
}

// watcher copies to out and calls found once what went through contains mark.
type watcher struct {
	out   io.Writer
	mark  []byte
	seen  []byte
	found func()
}

func (w *watcher) Write(p []byte) (int, error) {
	if w.found != nil {
		w.seen = append(w.seen, p...)
		if bytes.Contains(w.seen, w.mark) {
			w.found()
			w.found = nil
		}
		if len(w.seen) > 4096 {
			w.seen = w.seen[len(w.seen)-4096:]
		}
	}
	return w.out.Write(p)
}

func remoteCommand(args []string) {
	flags := flag.NewFlagSet("exec", flag.ExitOnError)
	transport := flags.String("transport", "spdy", "spdy, websocket or fallback")
	protocols := flags.String("protocols", "", "WebSocket subprotocols to offer, comma-separated")
	stdin := flags.Bool("stdin", false, "send our stdin")
	tty := flags.Bool("tty", false, "a terminal")
	stderr := flags.Bool("stderr", false, "a separate stderr")
	width := flags.Uint("width", 80, "terminal width")
	height := flags.Uint("height", 24, "terminal height")
	resizeOn := flags.String("resize-on", "", "resize once stdout shows this")
	resize := flags.String("resize", "", "the new size, WxH")
	_ = flags.Parse(args)
	if flags.NArg() != 1 {
		fail("want one URL")
	}
	var offered []string
	if *protocols != "" {
		offered = strings.Split(*protocols, ",")
	}
	options := remotecommand.StreamOptions{Stdout: os.Stdout, Tty: *tty}
	if *stdin {
		options.Stdin = os.Stdin
	}
	if *stderr {
		options.Stderr = os.Stderr
	}
	if *tty {
		queue := &sizes{ch: make(chan remotecommand.TerminalSize, 2)}
		queue.ch <- remotecommand.TerminalSize{Width: uint16(*width), Height: uint16(*height)}
		if *resizeOn != "" {
			var w, h uint16
			if _, err := fmt.Sscanf(*resize, "%dx%d", &w, &h); err != nil {
				fail("bad -resize %q: %v", *resize, err)
			}
			options.Stdout = &watcher{out: os.Stdout, mark: []byte(*resizeOn), found: func() {
				queue.ch <- remotecommand.TerminalSize{Width: w, Height: h}
			}}
		}
		options.TerminalSizeQueue = queue
	}
	err := executor(*transport, flags.Arg(0), offered).StreamWithContext(context.Background(), options)
	var exitErr exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &exitErr):
		os.Exit(exitErr.ExitStatus())
	default:
		fail("%v", err)
	}
}

func dialer(transport, raw string) httpstream.Dialer {
	config := &rest.Config{}
	parsed, err := url.Parse(raw)
	if err != nil {
		fail("bad url: %v", err)
	}
	roundTripper, upgrader, err := spdy.RoundTripperFor(config)
	if err != nil {
		fail("spdy round tripper: %v", err)
	}
	spdyDialer := spdy.NewDialer(upgrader, &http.Client{Transport: roundTripper}, "POST", parsed)
	wsDialer, err := portforward.NewSPDYOverWebsocketDialer(parsed, config)
	if err != nil {
		fail("websocket dialer: %v", err)
	}
	switch transport {
	case "spdy":
		return spdyDialer
	case "websocket":
		return wsDialer
	case "fallback":
		return portforward.NewFallbackDialer(wsDialer, spdyDialer, upgradeFailed)
	}
	fail("unknown transport %q", transport)
	return nil
}

func portForward(args []string) {
	flags := flag.NewFlagSet("portforward", flag.ExitOnError)
	transport := flags.String("transport", "spdy", "spdy, websocket or fallback")
	port := flags.Int("port", 0, "the pod's port")
	connections := flags.Int("connections", 1, "connections in all")
	parallel := flags.Int("parallel", 0, "connections open at once (0: all)")
	_ = flags.Parse(args)
	if flags.NArg() != 1 {
		fail("want one URL")
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	forwarder, err := portforward.NewOnAddresses(
		dialer(*transport, flags.Arg(0)), []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", *port)},
		stop, ready, os.Stderr, os.Stderr)
	if err != nil {
		fail("port forwarder: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- forwarder.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		fail("forward: %v", err)
	}
	ports, err := forwarder.GetPorts()
	if err != nil || len(ports) != 1 {
		fail("ports: %v %v", ports, err)
	}
	local := fmt.Sprintf("127.0.0.1:%d", ports[0].Local)
	var wg sync.WaitGroup
	failures := make(chan error, *connections)
	if *parallel <= 0 {
		*parallel = *connections
	}
	slots := make(chan struct{}, *parallel)
	for i := 0; i < *connections; i++ {
		wg.Add(1)
		slots <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-slots }()
			failures <- echo(local, i)
		}(i)
	}
	wg.Wait()
	close(failures)
	bad := 0
	for err := range failures {
		if err != nil {
			bad++
			fmt.Fprintf(os.Stderr, "connection: %v\n", err)
		}
	}
	close(stop)
	<-done
	if bad > 0 {
		fail("%d of %d connections failed", bad, *connections)
	}
	fmt.Printf("OK %d\n", *connections)
}

func echo(address string, i int) error {
	conn, err := net.DialTimeout("tcp", address, 30*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	line := fmt.Sprintf("ping %d\n", i)
	if _, err := conn.Write([]byte(line)); err != nil {
		return err
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("%d: %w", i, err)
	}
	if got != line {
		return fmt.Errorf("%d: sent %q, got %q", i, line, got)
	}
	return nil
}

func echoServer(args []string) {
	flags := flag.NewFlagSet("echo-server", flag.ExitOnError)
	port := flags.Int("port", 8080, "TCP port to listen on, all addresses")
	_ = flags.Parse(args)
	listener, err := net.Listen("tcp", fmt.Sprintf(":%d", *port))
	if err != nil {
		fail("listen: %v", err)
	}
	for {
		conn, err := listener.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		go func() {
			defer conn.Close()
			_, _ = io.Copy(conn, conn)
		}()
	}
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: clientgo exec|attach|portforward|echo-server ...")
	}
	switch os.Args[1] {
	case "exec", "attach":
		remoteCommand(os.Args[2:])
	case "portforward":
		portForward(os.Args[2:])
	case "echo-server":
		echoServer(os.Args[2:])
	default:
		fail("unknown command %q", os.Args[1])
	}
}
