"""The speaker classifier for corpora too large for one-vs-rest SGD (`fidelity.MAX_FIT_SIZE`):
each character is the normalised sum of its lines' TF-IDF vectors (the same character n-grams),
and a line is attributed by cosine similarity to every character. One pass over the lines to
fit (SGD makes one per character), a sparse product to score. Probabilities are a softmax of the
similarities at a fixed temperature: ranks are exact, probabilities only relative."""

TEMPERATURE = 20.0  # cosine similarities lie in [0, 1]: x20 spreads them over a usable softmax range


class CentroidClassifier:
    """scikit-learn's `fit` / `predict_proba` / `classes_` over sparse class centroids."""

    def __init__(self, vectorizer, temperature: float = TEMPERATURE):
        self.vectorizer, self.temperature = vectorizer, temperature
        self.classes_, self.centroids = None, None

    def fit(self, texts, labels):
        import numpy as np
        import scipy.sparse as sp
        from sklearn.preprocessing import normalize

        features = self.vectorizer.fit_transform(texts)
        self.classes_ = np.array(sorted(set(labels)))
        index = {c: i for i, c in enumerate(self.classes_)}
        rows = np.array([index[c] for c in labels])
        member = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))),
                               shape=(len(self.classes_), len(rows)))  # classes x lines, 1 where a line is the class's
        self.centroids = normalize(member @ features).tocsr()
        return self

    def predict_proba(self, texts):
        import numpy as np

        scores = (self.vectorizer.transform(texts) @ self.centroids.T).toarray() * self.temperature
        scores -= scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        return weights / weights.sum(axis=1, keepdims=True)
