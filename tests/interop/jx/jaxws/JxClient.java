// A JX client on JAX-WS (the Metro reference implementation Debian ships),
// compiled against the classes `wsimport -XadditionalHeaders -p jx` generated
// from a JX WSDL (the published jx2007.wsdl, or a copy whose namespace lost
// its hyphens). Driven by tests/test_jx_jaxws.py.
//
// Usage: java JxClient WSDL_URL ENDPOINT NAMESPACE DIR
//   DIR/in/<messageId>  the documents the sender puts, in name order
//   DIR/out/<messageId> where the receiver writes what GetDocument returned
// As the sender (Basic user dc-app, JX id DC) it puts every document for
// 1310001; as the receiver (cityhall-a) it gets until GetDocument answers
// false, confirming each twice; then it makes calls bmrgw must refuse.
// Prints one tab-separated line per observation on stdout.
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.net.URL;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import javax.xml.namespace.QName;
import javax.xml.soap.SOAPFault;
import javax.xml.ws.BindingProvider;
import javax.xml.ws.Holder;
import javax.xml.ws.WebServiceException;
import javax.xml.ws.soap.SOAPFaultException;
import org.w3c.dom.Element;
import org.w3c.dom.Node;

import jx.JXMSTransfer;
import jx.JXMSTransferSoap;
import jx.MessageHeader;

public final class JxClient {
    private static final String PASSWORD = "jx-test-password";
    private static final String RECEIVER = "1310001";
    private static int serial = 0;

    private JxClient() {
    }

    public static void main(String[] args) throws Exception {
        URL wsdl = new URL(args[0]);
        String endpoint = args[1];
        String namespace = args[2];
        Path dir = Paths.get(args[3]);
        JXMSTransfer service = new JXMSTransfer(wsdl, new QName(namespace, "JXMSTransfer"));
        JXMSTransferSoap sender = port(service, endpoint, "dc-app");
        JXMSTransferSoap receiver = port(service, endpoint, "cityhall-a");

        List<Path> documents = new ArrayList<>();
        try (DirectoryStream<Path> in = Files.newDirectoryStream(dir.resolve("in"))) {
            in.forEach(documents::add);
        }
        Collections.sort(documents);
        for (Path document : documents) {
            String messageId = document.getFileName().toString();
            boolean put = sender.putDocument(messageId, Files.readAllBytes(document), "DC", RECEIVER,
                    "TEXT", "notice", "", header("DC"));
            out("put", messageId, String.valueOf(put));
        }

        Files.createDirectories(dir.resolve("out"));
        for (int round = 0; round <= documents.size(); round++) {  // one more than was put: ends with false
            Holder<String> receiverId = new Holder<>(RECEIVER);
            Holder<Boolean> result = new Holder<>();
            Holder<String> messageId = new Holder<>();
            Holder<byte[]> data = new Holder<>();
            Holder<String> senderId = new Holder<>();
            Holder<String> formatType = new Holder<>();
            Holder<String> documentType = new Holder<>();
            Holder<String> compressType = new Holder<>();
            Holder<MessageHeader> head = header(RECEIVER);
            receiver.getDocument(receiverId, result, messageId, data, senderId, formatType, documentType,
                    compressType, head);
            if (!result.value) {
                out("empty", String.valueOf(result.value), head.value.getTo());
                break;
            }
            Files.write(dir.resolve("out").resolve(messageId.value), data.value);
            out("got", messageId.value, senderId.value, receiverId.value, formatType.value, documentType.value,
                    compressType.value, head.value.getTo(), String.valueOf(data.value.length));
            boolean first = receiver.confirmDocument(messageId.value, senderId.value, RECEIVER, header(RECEIVER));
            boolean again = receiver.confirmDocument(messageId.value, senderId.value, RECEIVER, header(RECEIVER));
            out("confirm", messageId.value, String.valueOf(first), String.valueOf(again));
        }

        try {  // cityhall-a may poll only for 1310001
            Holder<String> other = new Holder<>("1310002");
            receiver.getDocument(other, new Holder<>(), new Holder<>(), new Holder<>(), new Holder<>(),
                    new Holder<>(), new Holder<>(), new Holder<>(), header("1310002"));
            out("no-fault", "GetDocument");
        } catch (SOAPFaultException e) {
            fault("GetDocument", e);
        }
        try {  // a wrong password: bmrgw answers 401 with a fault body; Metro reports the status, not the fault
            JXMSTransferSoap stranger = port(service, endpoint, "cityhall-a");
            ((BindingProvider) stranger).getRequestContext().put(BindingProvider.PASSWORD_PROPERTY, "wrong");
            stranger.confirmDocument("never-put", "DC", RECEIVER, header(RECEIVER));
            out("no-fault", "wrong password");
        } catch (WebServiceException e) {
            out("refused", e.getClass().getSimpleName(), e.getMessage().replace('\t', ' ').replace('\n', ' '));
        }
        try {  // a messageId the gateway never saw
            receiver.confirmDocument("never-put", "DC", RECEIVER, header(RECEIVER));
            out("no-fault", "ConfirmDocument");
        } catch (SOAPFaultException e) {
            fault("ConfirmDocument", e);
        }
    }

    private static JXMSTransferSoap port(JXMSTransfer service, String endpoint, String user) {
        JXMSTransferSoap port = service.getJXMSTransferSoap();
        Map<String, Object> context = ((BindingProvider) port).getRequestContext();
        context.put(BindingProvider.ENDPOINT_ADDRESS_PROPERTY, endpoint);
        context.put(BindingProvider.USERNAME_PROPERTY, user);
        context.put(BindingProvider.PASSWORD_PROPERTY, PASSWORD);
        return port;
    }

    private static Holder<MessageHeader> header(String from) {
        MessageHeader header = new MessageHeader();
        header.setFrom(from);
        header.setTo("gateway");
        header.setMessageId("jaxws-" + ProcessHandle.current().pid() + "-" + (++serial));
        header.setTimestamp(Instant.now().toString());
        return new Holder<>(header);
    }

    private static void fault(String operation, SOAPFaultException e) {
        SOAPFault fault = e.getFault();
        String code = "";
        if (fault.hasDetail()) {
            Iterator<?> entries = fault.getDetail().getDetailEntries();
            while (entries.hasNext()) {
                Object entry = entries.next();
                if (entry instanceof Element && "Error".equals(((Node) entry).getLocalName())) {
                    code = ((Element) entry).getAttribute("code");
                }
            }
        }
        out("fault", operation, fault.getFaultCodeAsQName().getLocalPart(), code,
                fault.getFaultString().replace('\t', ' ').replace('\n', ' '));
    }

    private static void out(String... fields) {
        System.out.println(String.join("\t", fields));
    }
}
