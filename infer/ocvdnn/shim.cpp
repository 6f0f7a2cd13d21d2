#include "shim.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/dnn.hpp>

struct ocvdnn_net {
    cv::dnn::Net net;
    std::vector<cv::Mat> outs;
};

static char* message(const std::string& s) {
    char* m = static_cast<char*>(std::malloc(s.size() + 1));
    if (m != nullptr) {
        std::memcpy(m, s.c_str(), s.size() + 1);
    }
    return m;
}

// guard runs f and turns any exception into an error message.
template <typename F>
static char* guard(F f) {
    try {
        f();
        return nullptr;
    } catch (const cv::Exception& e) {
        // e.msg is OpenCV's own text; e.what() adds the source location.
        return message(e.what());
    } catch (const std::exception& e) {
        return message(e.what());
    } catch (...) {
        return message("unknown C++ exception");
    }
}

extern "C" {

char* ocvdnn_read_onnx(const char* data, size_t len, ocvdnn_net** out) {
    *out = nullptr;
    return guard([&] {
        cv::dnn::Net net = cv::dnn::readNetFromONNX(data, len);
        if (net.empty()) {
            throw std::runtime_error("OpenCV built an empty network");
        }
        net.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
        net.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
        *out = new ocvdnn_net{net, {}};
    });
}

char* ocvdnn_output_names(ocvdnn_net* net, char** names) {
    *names = nullptr;
    return guard([&] {
        std::string joined;
        for (const auto& n : net->net.getUnconnectedOutLayersNames()) {
            if (!joined.empty()) {
                joined += '\n';
            }
            joined += n;
        }
        *names = message(joined);
    });
}

char* ocvdnn_set_input(ocvdnn_net* net, const char* name, float* data, const int* dims, int ndims) {
    return guard([&] {
        cv::Mat blob(ndims, dims, CV_32F, data);
        net->net.setInput(blob, name);
    });
}

char* ocvdnn_forward(ocvdnn_net* net, const char** names, int n) {
    return guard([&] {
        std::vector<cv::String> outNames(names, names + n);
        net->outs.clear();
        net->net.forward(net->outs, outNames);
        if (net->outs.size() != static_cast<size_t>(n)) {
            throw std::runtime_error("forward returned " + std::to_string(net->outs.size()) +
                                     " outputs, want " + std::to_string(n));
        }
    });
}

char* ocvdnn_copy_output(ocvdnn_net* net, int i, float* dst, size_t len) {
    return guard([&] {
        if (i < 0 || static_cast<size_t>(i) >= net->outs.size()) {
            throw std::runtime_error("no output " + std::to_string(i));
        }
        cv::Mat m = net->outs[i];
        if (m.type() != CV_32F) {
            throw std::runtime_error("output is not float32");
        }
        if (m.total() != len) {
            std::string shape;
            for (int d = 0; d < m.dims; d++) {
                shape += (d ? " " : "") + std::to_string(m.size[d]);
            }
            throw std::runtime_error("OpenCV computed shape [" + shape + "] (" + std::to_string(m.total()) +
                                     " elements), the model declares " + std::to_string(len));
        }
        if (!m.isContinuous()) {
            m = m.clone();
        }
        std::memcpy(dst, m.ptr<float>(), len * sizeof(float));
    });
}

void ocvdnn_free(ocvdnn_net* net) { delete net; }

}  // extern "C"
