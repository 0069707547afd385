// streamclient: the client side of Kubernetes' exec and port-forward streaming over SPDY, as kubectl and the
// API server speak it, built on moby/spdystream (the library Kubernetes itself uses; Debian's
// golang-github-docker-spdystream-dev). The tests run it against moorage's streaming server.
//
//	streamclient exec|attach URL [-stdin] [-tty] [-nostdout] [-stderr] [-width W -height H] [-protocol P,...]
//	    [-resize-junk N] [-size-delay D]
//	    stdin is copied to the stdin stream; stdout/stderr streams to stdout/stderr; the error stream's text
//	    is printed to stderr as "ERROR: <text>"; for v4, the exit code from the status is this program's.
//	streamclient portforward URL PORT
//	    stdin is copied to the data stream (closed at EOF), the data stream to stdout, the error stream's text
//	    to stderr as "ERROR: <text>".
//	streamclient portforward-many URL PORT N
//	    N connections one after another through one session, each sending "ping <i>" and expecting it back;
//	    each stream is closed with FIN only (Close, never Reset), as the protocol allows. Prints "OK <N>".
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "streamclient: "+format+"\n", args...)
	os.Exit(100)
}

// upgrade opens URL with an HTTP upgrade to SPDY/3.1 offering protocols; returns the session and the chosen one.
func upgrade(raw string, protocols []string) (*spdystream.Connection, string) {
	u, err := url.Parse(raw)
	if err != nil {
		fail("bad url: %v", err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		fail("dial: %v", err)
	}
	req, _ := http.NewRequest("POST", raw, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	if err := req.Write(conn); err != nil {
		fail("write request: %v", err)
	}
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, req)
	if err != nil {
		fail("read response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(os.Stderr, "HTTP %d: %s", resp.StatusCode, body)
		if accepted := resp.Header.Get("X-Accepted-Stream-Protocol-Versions"); accepted != "" {
			fmt.Fprintf(os.Stderr, "ACCEPTED: %s\n", accepted)
		}
		os.Exit(101)
	}
	if reader.Buffered() > 0 {
		fail("server sent data before any stream was opened")
	}
	session, err := spdystream.NewConnection(conn, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go session.Serve(spdystream.NoOpStreamHandler)
	return session, resp.Header.Get("X-Stream-Protocol-Version")
}

func open(session *spdystream.Connection, headers http.Header) *spdystream.Stream {
	stream, err := session.CreateStream(headers, nil, false)
	if err != nil {
		fail("create stream %v: %v", headers, err)
	}
	if err := stream.WaitTimeout(30 * time.Second); err != nil {
		fail("no reply for stream %v: %v", headers, err)
	}
	return stream
}

func kind(name string) http.Header {
	h := http.Header{}
	h.Set("streamType", name)
	return h
}

type status struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
	Details struct {
		Causes []struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"causes"`
	} `json:"details"`
}

func execCommand(args []string) {
	flags := flag.NewFlagSet("exec", flag.ExitOnError)
	stdin := flags.Bool("stdin", false, "send stdin")
	tty := flags.Bool("tty", false, "a terminal")
	noStdout := flags.Bool("nostdout", false, "no stdout stream")
	stderr := flags.Bool("stderr", false, "a stderr stream")
	width := flags.Int("width", 0, "terminal width")
	height := flags.Int("height", 0, "terminal height")
	junk := flags.Int("resize-junk", 0, "after the size, this many bytes of an unterminated JSON object on resize")
	sizeDelay := flags.Duration("size-delay", 0, "wait this long after opening the resize stream to send the size")
	protocols := flags.String("protocol", "v4.channel.k8s.io,v3.channel.k8s.io,v2.channel.k8s.io,channel.k8s.io", "offered")
	flags.Parse(args[1:])
	session, protocol := upgrade(args[0], strings.Split(*protocols, ","))
	fmt.Fprintf(os.Stderr, "PROTOCOL: %s\n", protocol)
	errorStream := open(session, kind("error"))
	var wg sync.WaitGroup
	if *stdin {
		s := open(session, kind("stdin"))
		go func() { io.Copy(s, os.Stdin); s.Close() }()
	}
	if !*noStdout {
		s := open(session, kind("stdout"))
		wg.Add(1)
		go func() { io.Copy(os.Stdout, s); wg.Done() }()
	}
	if *stderr {
		s := open(session, kind("stderr"))
		wg.Add(1)
		go func() { io.Copy(os.Stderr, s); wg.Done() }()
	}
	if *tty && protocol != "v2.channel.k8s.io" && protocol != "channel.k8s.io" {
		s := open(session, kind("resize"))
		time.Sleep(*sizeDelay)
		if *width > 0 {
			json.NewEncoder(s).Encode(map[string]int{"Width": *width, "Height": *height})
		}
		if *junk > 0 {
			go func() {
				s.Write([]byte(`{"Width": "`))
				chunk := []byte(strings.Repeat("x", 1<<16))
				for sent := 0; sent < *junk; sent += len(chunk) {
					if _, err := s.Write(chunk); err != nil {
						return
					}
				}
			}()
		}
	}
	message, _ := io.ReadAll(errorStream)
	wg.Wait()
	session.Close()
	if len(message) == 0 {
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "ERROR: %s\n", message)
	if protocol != "v4.channel.k8s.io" {
		os.Exit(102)
	}
	var st status
	if err := json.Unmarshal(message, &st); err != nil {
		fail("error stream is not a status: %v", err)
	}
	if st.Status == "Success" {
		os.Exit(0)
	}
	for _, cause := range st.Details.Causes {
		if st.Reason == "NonZeroExitCode" && cause.Reason == "ExitCode" {
			code, _ := strconv.Atoi(cause.Message)
			os.Exit(code)
		}
	}
	os.Exit(103)
}

func portForward(args []string) {
	session, protocol := upgrade(args[0], []string{"portforward.k8s.io"})
	fmt.Fprintf(os.Stderr, "PROTOCOL: %s\n", protocol)
	headers := kind("error")
	headers.Set("port", args[1])
	headers.Set("requestID", "0")
	errorStream := open(session, headers)
	headers = kind("data")
	headers.Set("port", args[1])
	headers.Set("requestID", "0")
	data := open(session, headers)
	go func() { io.Copy(data, os.Stdin); data.Close() }()
	done := make(chan struct{})
	go func() { io.Copy(os.Stdout, data); close(done) }()
	message, _ := io.ReadAll(errorStream)
	if len(message) > 0 {
		fmt.Fprintf(os.Stderr, "ERROR: %s\n", message)
		session.Close()
		os.Exit(102)
	}
	<-done
	session.Close()
}

// portForwardMany: connections in turn through one session, every stream half-closed both ways, none reset.
func portForwardMany(args []string) {
	session, _ := upgrade(args[0], []string{"portforward.k8s.io"})
	count, _ := strconv.Atoi(args[2])
	for i := 0; i < count; i++ {
		headers := kind("error")
		headers.Set("port", args[1])
		headers.Set("requestID", strconv.Itoa(i))
		errorStream := open(session, headers)
		errorStream.Close() // nothing to say on it, as kubectl does
		headers = kind("data")
		headers.Set("port", args[1])
		headers.Set("requestID", strconv.Itoa(i))
		data := open(session, headers)
		want := fmt.Sprintf("ping %d\n", i)
		data.Write([]byte(want))
		data.Close()
		got, _ := io.ReadAll(data)
		message, _ := io.ReadAll(errorStream)
		if len(message) > 0 || string(got) != want {
			fmt.Fprintf(os.Stderr, "ERROR: connection %d: got %q, error %q\n", i, got, message)
			os.Exit(102)
		}
	}
	fmt.Printf("OK %d\n", count)
	session.Close()
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: streamclient exec|portforward URL ...")
	}
	switch os.Args[1] {
	case "exec", "attach": // the same protocol: attach just has no command
		execCommand(os.Args[2:])
	case "portforward":
		portForward(os.Args[2:])
	case "portforward-many":
		portForwardMany(os.Args[2:])
	default:
		fail("unknown command %q", os.Args[1])
	}
}
