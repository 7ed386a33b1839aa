"""Image sequences: ``mnist_lstm`` (Fashion-MNIST/MNIST by rows or pixels) and ``classifier_report`` (its figures)."""
