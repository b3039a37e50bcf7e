class DenseTrainer:
    pass
